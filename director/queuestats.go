package director

import (
	"os"
	"strconv"
	"strings"
)

// QueueStats are the kernel's counts of one queue.
type QueueStats struct {
	Num, Waiting uint64
	QueueDropped uint64 // dropped for a full queue
	UserDropped  uint64 // dropped for a full socket buffer
}

// ReadQueueStats reads /proc/net/netfilter/nfnetlink_queue of the calling
// thread's network namespace; do runs it there (nil: as is). Through
// /proc/thread-self: /proc/net is the process's first thread's, and do
// moves only the thread it runs on.
func ReadQueueStats(do func(func() error) error) []QueueStats {
	var text []byte
	f := func() (err error) {
		text, err = os.ReadFile("/proc/thread-self/net/netfilter/nfnetlink_queue")
		return err
	}
	if do != nil {
		do(f)
	} else {
		f()
	}
	return parseQueueStats(text)
}

// parseQueueStats reads the file's lines: queue number, peer port id,
// packets waiting, copy mode, copy range, queue dropped, user dropped,
// last id, 1.
func parseQueueStats(b []byte) []QueueStats {
	var out []QueueStats
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 {
			continue
		}
		var v [7]uint64
		ok := true
		for i := range v {
			n, err := strconv.ParseUint(f[i], 10, 64)
			ok = ok && err == nil
			v[i] = n
		}
		if ok {
			out = append(out, QueueStats{Num: v[0], Waiting: v[2], QueueDropped: v[5], UserDropped: v[6]})
		}
	}
	return out
}
