package proxy

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// TestSpliceIsUsed proves the TCP data path moves bytes with splice(2): it
// re-runs this test binary's helper (which proxies 32 MB) under strace and
// counts the splice calls. Without strace it skips, except in CI, where
// .ci/run installs it.
func TestSpliceIsUsed(t *testing.T) {
	if os.Getenv("TETHER_SPLICE_HELPER") == "1" {
		t.Skip("helper mode")
	}
	strace, err := exec.LookPath("strace")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("strace is missing in CI; .ci/run installs it")
		}
		t.Skip("strace is not installed (apt-get install strace)")
	}
	out := filepath.Join(t.TempDir(), "strace.txt")
	cmd := exec.Command(strace, "-f", "-qq", "-e", "trace=splice", "-o", out,
		os.Args[0], "-test.run", "^TestSpliceHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "TETHER_SPLICE_HELPER=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper under strace: %v\n%s", err, b)
	}
	trace, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	calls := regexp.MustCompile(`splice\(\d+, NULL, \d+, NULL, \d+, (SPLICE_F_MOVE\|)?SPLICE_F_NONBLOCK\) = [1-9]`).FindAll(trace, -1)
	// 32 MB in at most 64 KiB per call (tether's pipe), each byte spliced
	// into and out of the pipe: well over 32 successful calls.
	if len(calls) < 32 {
		t.Fatalf("%d successful splice calls for 32 MB through the proxy; the data path is not splicing\n%.2000s", len(calls), trace)
	}
	t.Logf("%d successful splice calls moved 32 MB", len(calls))
}

func TestSpliceHelper(t *testing.T) {
	if os.Getenv("TETHER_SPLICE_HELPER") != "1" {
		t.Skip("runs only under TestSpliceIsUsed")
	}
	const size = 32 << 20
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := sink.Accept()
		if err != nil {
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		got <- n
	}()
	listen := freeAddr(t)
	startProxy(t, mustConfig(t, fmt.Sprintf("services:\n  - name: s\n    listen: %s\n    servers: [{address: %s}]\n", listen, sink.Addr())), Options{})
	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(c, io.LimitReader(rand.NewChaCha8([32]byte{3}), size))
	c.Close()
	if n := <-got; n != size {
		t.Fatalf("sink got %d bytes, want %d", n, size)
	}
}
