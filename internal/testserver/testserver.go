package testserver

import (
	"net"
	"net/netip"
	"sync"
	"testing"
)

// TCP listens on 127.0.0.1 and runs handle on each connection in a
// goroutine of its own, which closes the connection when handle returns.
// When the test ends the listener and every open connection are closed
// and the goroutines waited for.
func TCP(t testing.TB, handle func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { mu.Lock(); delete(conns, c); mu.Unlock(); c.Close() }()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		open := make([]net.Conn, 0, len(conns))
		for c := range conns {
			open = append(open, c)
		}
		mu.Unlock()
		for _, c := range open { // closed outside the lock
			c.Close()
		}
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}
