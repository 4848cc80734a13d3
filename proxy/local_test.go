package proxy

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/tcploop"
)

// A connect that fails for a local reason (the host out of descriptors,
// ports, buffers or memory) is not the server's fault: the one client
// connection fails, the server stays up with every template, and the log
// says so once a second at most. It used to mark the server failed for
// 10 s and drop its templates, and with connect_attempts 3 walk one client
// through every server.
func TestLocalDialErrorsAreNotTheServersFault(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.EADDRNOTAVAIL, syscall.ENOMEM} {
		for _, loops := range []int{0, -1} { // the event loops, and a goroutine per connection
			t.Run(fmt.Sprintf("%s/loops=%d", errno, loops), func(t *testing.T) { localDialErrors(t, errno, loops) })
		}
	}
}

func localDialErrors(t *testing.T, errno syscall.Errno, loops int) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	listen := freeAddr(t)
	var logs bytes.Buffer
	p := New(mustConfig(t, "services:\n"+serviceYAML("web", listen, "rr", "    persistence: {timeout: 300s}\n", a, b)),
		Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), TCPLoops: loops})
	var short atomic.Bool // the host is short of errno
	var d net.Dialer
	p.dialHook = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if short.Load() {
			return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", errno)}
		}
		return d.DialContext(ctx, network, addr)
	}
	p.loopDialHook = func(addr netip.AddrPort) (int, error) {
		if short.Load() {
			return -1, os.NewSyscallError("connect", errno)
		}
		return tcploop.Dial(addr)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	home := map[int]string{}
	for i := range 20 {
		name, err := who(srcAddr(i), listen)
		if err != nil {
			t.Fatal(err)
		}
		home[i] = name
	}
	short.Store(true)
	for i := range 20 {
		if _, err := who(srcAddr(i), listen); err == nil {
			t.Fatalf("client %d was served while every dial failed", i)
		}
	}
	for _, s := range p.Status()[0].Servers {
		if s.State != "up" || s.ConnectFails != 0 {
			t.Errorf("server %s: state %s, %d connect failures; the host's trouble was blamed on it", s.Address, s.State, s.ConnectFails)
		}
	}
	if ts, _ := p.Templates(api.TemplateFilter{}); len(ts) != 20 {
		t.Errorf("%d templates left of 20", len(ts))
	}
	short.Store(false)
	for i := range 20 {
		if name, err := who(srcAddr(i), listen); err != nil || name != home[i] {
			t.Errorf("client %d came back to %q (%v), it was on %s", i, name, err, home[i])
		}
	}
	if n := strings.Count(logs.String(), "failed for a local reason"); n != 1 {
		t.Errorf("%d log lines for 20 local failures within a second, want 1:\n%s", n, logs.String())
	}
}
