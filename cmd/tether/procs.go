package main

import (
	"os"
	"runtime"

	"github.com/tetherlb/tether/config"
)

// The event loops hold their processors while they have work: a busy
// loop yields to the Go scheduler every 5 ms, and after work it waits a
// millisecond in its own epoll set, its processor held. With a loop on
// every processor, any other goroutine on the data path (one-packet UDP
// services' datagrams, the director's queue readers) waits for a yield: a
// UDP ping-pong through tether while wrk loaded a TCP service of the same
// process took 20 ms a round trip when UDP services were goroutines too,
// and 106-142 µs with one processor more than loops (README,
// Performance). So a config with such a data path runs one processor
// more than it has loops; a config without (UDP services and the
// TPROXYed UDP of mark classes are read on the loops) keeps one a loop,
// which is what its TCP throughput was measured with.

// loopFree says whether cfg has a data path the TCP event loops do not
// serve.
func loopFree(cfg *config.File) bool {
	if cfg.HasDirector() {
		return true
	}
	for _, s := range cfg.Services {
		if s.Protocol == config.UDP && s.OnePacket {
			return true
		}
	}
	return false
}

// procsFor is how many processors the Go scheduler should have for cfg
// served by loops TCP event loops: loops, and one more for a data path
// they do not serve; 0 leaves the number alone (no loops).
func procsFor(cfg *config.File, loops int) int {
	if loops <= 0 {
		return 0
	}
	if loopFree(cfg) {
		return loops + 1
	}
	return loops
}

// setProcs applies procsFor, unless GOMAXPROCS in the environment rules.
func setProcs(cfg *config.File, loops int) {
	if _, set := os.LookupEnv("GOMAXPROCS"); set {
		return
	}
	if n := procsFor(cfg, loops); n > 0 && n != runtime.GOMAXPROCS(0) {
		runtime.GOMAXPROCS(n)
	}
}
