package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/config"
)

// backend is a real server on loopback that answers every connection with
// its name and a newline, then echoes what it reads. kill closes it and
// every connection it has, like a crashed server.
type backend struct {
	name string
	ln   net.Listener
	addr netip.AddrPort

	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func startBackend(t *testing.T, name string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, ln: ln, addr: ln.Addr().(*net.TCPAddr).AddrPort(), conns: map[net.Conn]bool{}}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns[c] = true
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer func() { b.mu.Lock(); delete(b.conns, c); b.mu.Unlock(); c.Close() }()
				if _, err := io.WriteString(c, b.name+"\n"); err != nil {
					return
				}
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(b.kill)
	return b
}

func (b *backend) kill() {
	b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// freeAddr returns a loopback address:port nobody listens on right now.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// serviceYAML renders one service; extra is added under the service.
func serviceYAML(name, listen, scheduler, extra string, servers ...*backend) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  - name: %s\n    listen: %s\n    scheduler: %s\n%s    servers:\n", name, listen, scheduler, extra)
	for _, s := range servers {
		fmt.Fprintf(&b, "      - address: %s\n", s.addr)
	}
	return b.String()
}

func mustConfig(t testing.TB, yaml string) *config.File {
	t.Helper()
	f, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yaml)
	}
	return f
}

// startProxy runs a proxy for cfg and stops it when the test ends.
func startProxy(t testing.TB, cfg *config.File, o Options) *Proxy {
	t.Helper()
	p := New(cfg, o)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	return p
}

// who connects from src to addr and returns the name of the backend that
// answered.
func who(src netip.Addr, addr string) (string, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("from %s: %w", src, err)
	}
	return strings.TrimSpace(line), nil
}

// srcAddr is the i-th client source address: 4 per /24, in 127.1.0.0/16.
func srcAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, 1, byte(i / 4), byte(i%4 + 1)})
}

func group(a netip.Addr) netip.Prefix {
	p, _ := a.Prefix(24)
	return p
}

var affinityFilterAll = affinity.Filter{}

// checkHas reports each of want that out (what, in the messages) lacks and
// each of gone that it still has.
func checkHas(t *testing.T, what, out string, want, gone []string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, out)
		}
	}
	for _, g := range gone {
		if strings.Contains(out, g) {
			t.Errorf("%s still has %q:\n%s", what, g, out)
		}
	}
}

// hold opens a connection from src to addr and reads the server's name
// from it; the connection stays open until the test closes it or ends.
func hold(t *testing.T, src, addr string) (net.Conn, string) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, readLine(t, c)
}

// readLine reads the first line the server sends on c, within 5s.
func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("from %s: %v", c.LocalAddr(), err)
	}
	return strings.TrimSpace(line)
}
