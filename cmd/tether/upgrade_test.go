package main

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A hot upgrade (SIGUSR2) loses no connection and no template: under a
// steady load of short connections from 50 clients, each of them bound to
// a server, and with 4 long connections open, the old process hands its
// sockets to a new one. No short connection fails and each lands on its
// client's server, before and after; the long connections go on in the
// old process, which exits once they close. A UDP service answers through
// the new process too.
func TestHotUpgrade(t *testing.T) {
	dir := t.TempDir()
	web, dns := freeAddr(t), freeUDPAddr(t)
	cfg := fmt.Sprintf(`admin: {socket: %s/admin.sock}
drain_timeout: 20s
services:
  - name: web
    listen: %s
    scheduler: rr
    persistence: {timeout: 300s}
    servers: [{address: %s}, {address: %s}, {address: %s}]
  - name: dns
    protocol: udp
    listen: %s
    servers: [{address: %s}]
`, dir, web, nameServer(t, "a"), nameServer(t, "b"), nameServer(t, "c"), dns, udpEcho(t))
	// systemd's notify socket: the main PID must move to the new process
	// before it says it is ready.
	notes := listenNotify(t, dir+"/notify.sock")
	old, logs := runChild(t, writeConfig(t, dir, cfg), "NOTIFY_SOCKET="+dir+"/notify.sock")
	client := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 4, byte(i / 4), byte(i%4 + 1)}) }
	eventually(t, "tether serves web", func() error { _, err := whoFrom(client(0), web); return err })
	if err := udpAsk(dns, "before"); err != nil {
		t.Fatal(err)
	}

	const clients = 50
	home := map[int]string{}
	for i := range clients {
		name, err := whoFrom(client(i), web)
		if err != nil {
			t.Fatal(err)
		}
		home[i] = name
	}
	var long []net.Conn
	for i := range 4 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: client(100 + i).AsSlice()}}
		c, err := d.Dial("tcp", web)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		long = append(long, c)
	}

	// The steady load: 4 workers through the clients, until stop.
	var made, failed, strayed atomic.Int64
	var lastErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ; i = (i + 4) % clients {
				select {
				case <-stop:
					return
				default:
				}
				name, err := whoFrom(client(i), web)
				switch {
				case err != nil:
					failed.Add(1)
					lastErr.Store(err)
				case name != home[i]:
					strayed.Add(1)
				default:
					made.Add(1)
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // load before the upgrade
	before := made.Load()
	old.Process.Signal(syscall.SIGUSR2)
	var child int
	eventually(t, "the new process took over", func() error {
		m := regexp.MustCompile(`upgraded: the new process serves.* pid=(\d+)`).FindStringSubmatch(logs.String())
		if m == nil {
			return fmt.Errorf("not yet:\n%s", logs.String())
		}
		child, _ = strconv.Atoi(m[1])
		return nil
	})
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	moved := fmt.Sprintf("MAINPID=%d", child)
	eventually(t, "systemd told", func() error {
		got := notes()
		i := slices.Index(got, moved)
		j := slices.IndexFunc(got, func(n string) bool { return strings.HasPrefix(n, "READY=1") && strings.HasSuffix(n, moved) })
		if i < 0 || j < i {
			return fmt.Errorf("notifications %q: want %q, then the new process's READY=1", got, moved)
		}
		return nil
	})
	at := made.Load()
	eventually(t, "load after the upgrade", func() error {
		if made.Load() < at+200 {
			return fmt.Errorf("%d connections since the upgrade", made.Load()-at)
		}
		return nil
	})
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || strayed.Load() != 0 {
		t.Fatalf("%d connections failed (last: %v), %d went to another server than their client's, of %d\n%s", failed.Load(), lastErr.Load(), strayed.Load(), made.Load()+failed.Load()+strayed.Load(), logs.String())
	}
	if before == 0 {
		t.Fatal("no load before the upgrade")
	}

	// The long connections are the old process's, which waits for them.
	for i, c := range long {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintf(c, "still %d\n", i)
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != fmt.Sprintf("still %d\n", i) {
			t.Fatalf("long connection %d after the upgrade: %q, %v", i, line, err)
		}
	}
	if err := old.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the old process exited with long connections open: %v", err)
	}
	for _, c := range long {
		c.Close()
	}
	// Process.Wait, not Cmd.Wait: that one also waits for the output
	// pipe, which the new process holds too.
	exited := make(chan error, 1)
	go func() {
		st, err := old.Process.Wait()
		if err == nil && !st.Success() {
			err = fmt.Errorf("%v", st)
		}
		exited <- err
	}()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the old process: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the old process did not exit once its connections closed\n%s", logs.String())
	}
	if err := udpAsk(dns, "after"); err != nil {
		t.Fatalf("the UDP service after the upgrade: %v\n%s", err, logs.String())
	}
	// The new process serves on alone, every client on its server.
	for i := range clients {
		if name, err := whoFrom(client(i), web); err != nil || name != home[i] {
			t.Fatalf("client %d after the old process left: %q, %v (home %s)", i, name, err, home[i])
		}
	}
}

// A hot upgrade whose new process cannot start (here: the config file
// went bad meanwhile) changes nothing: the old process serves on, with
// its admin socket, and says why in its log.
func TestHotUpgradeFailureChangesNothing(t *testing.T) {
	dir := t.TempDir()
	web := freeAddr(t)
	cfg := fmt.Sprintf(`admin: {socket: %s/admin.sock}
services:
  - name: web
    listen: %s
    persistence: {timeout: 300s}
    servers: [{address: %s}]
`, dir, web, nameServer(t, "a"))
	path := writeConfig(t, dir, cfg)
	old, logs := runChild(t, path)
	eventually(t, "tether serves web", func() error { _, err := ask(web); return err })
	writeConfig(t, dir, "services: [{name: web, listen: nowhere}]\n")
	old.Process.Signal(syscall.SIGUSR2)
	eventually(t, "the failed upgrade logged", func() error {
		if !strings.Contains(logs.String(), "upgrade failed; this process goes on serving") {
			return fmt.Errorf("not yet:\n%s", logs.String())
		}
		return nil
	})
	if name, err := ask(web); err != nil || name != "a" {
		t.Fatalf("after the failed upgrade: %q, %v\n%s", name, err, logs.String())
	}
	if out, _, err := runCLI(t, "ls", "--admin", dir+"/admin.sock"); err != nil || !strings.Contains(out, "web") {
		t.Fatalf("the admin socket after the failed upgrade: %v\n%s", err, out)
	}
}

// freeUDPAddr is a loopback UDP address free now.
func freeUDPAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// udpEcho is a loopback UDP server echoing each datagram, until the test ends.
func udpEcho(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		b := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(b)
			if err != nil {
				return
			}
			c.WriteTo(b[:n], from)
		}
	}()
	return c.LocalAddr().String()
}

// udpAsk sends msg to addr and wants it back.
func udpAsk(addr, msg string) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	b := make([]byte, 100)
	n, err := c.Read(b)
	if err != nil {
		return err
	}
	if string(b[:n]) != msg {
		return fmt.Errorf("sent %q, got %q", msg, b[:n])
	}
	return nil
}

// listenNotify is a notify socket: the returned func lists the messages
// received so far.
func listenNotify(t *testing.T, path string) func() []string {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var mu sync.Mutex
	var got []string
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := c.Read(b)
			if err != nil {
				return
			}
			mu.Lock()
			got = append(got, string(b[:n]))
			mu.Unlock()
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}
