package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// whoFrom connects from src and returns the greeting's name.
func whoFrom(src netip.Addr, addr string) (string, error) {
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// Host trouble costs no client its server: tether runs at a descriptor
// limit of 256 while one client holds 400 connections open to a service
// and 600 spoofed sources flood a UDP service. The other TCP service and
// the admin socket still answer, and afterwards every one of 100 clients
// returns to its server. Before, dials failed with EMFILE, each failure
// marked a server failed and dropped its templates (the table went to 0),
// and accept failed on every listener of the process.
func TestShortOfDescriptorsNoClientLosesItsServer(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	web, other, dns := freeAddr(t), freeAddr(t), freeAddr(t)
	echo, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	cfg := fmt.Sprintf(`admin: {socket: %s}
services:
  - name: web
    listen: %s
    scheduler: rr
    persistence: {timeout: 300s}
    servers: [{address: %s}, {address: %s}, {address: %s}]
  - name: other
    listen: %s
    servers: [{address: %s}]
  - name: dns
    protocol: udp
    listen: %s
    servers: [{address: %s}]
`, sock, web, nameServer(t, "a"), nameServer(t, "b"), nameServer(t, "c"), other, nameServer(t, "o"), dns, echo.LocalAddr())
	_, logs := runChild(t, writeConfig(t, dir, cfg), "TETHER_TEST_NOFILE=256")
	client := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 1, byte(i / 4), byte(i%4 + 1)}) }
	eventually(t, "tether serves web", func() error { _, err := whoFrom(client(0), web); return err })

	home := map[int]string{}
	for i := range 100 {
		name, err := whoFrom(client(i), web)
		if err != nil {
			t.Fatalf("client %d: %v\n%s", i, err, logs.String())
		}
		home[i] = name
	}

	// The flood: 400 connections held open from one address, 600 sources
	// sending a datagram each.
	var flood []net.Conn
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 9, 0, 1)}}
	for range 400 {
		if c, err := d.Dial("tcp", web); err == nil {
			flood = append(flood, c)
		}
	}
	dnsAddr := netip.MustParseAddrPort(dns)
	for i := range 600 {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 10, byte(i/200), byte(i%200+1))})
		if err != nil {
			t.Fatal(err)
		}
		c.WriteToUDPAddrPort([]byte("q"), dnsAddr)
		c.Close()
	}
	if name, err := whoFrom(client(0), other); err != nil || name != "o" {
		t.Errorf("during the flood the other service answered %q, %v", name, err)
	}
	if _, _, err := runCLI(t, "ls", "--admin", sock); err != nil {
		t.Errorf("during the flood the admin socket refused: %v", err)
	}
	for _, c := range flood {
		c.Close()
	}
	flood = nil

	moved := 0
	for i := range 100 {
		var name string
		eventually(t, fmt.Sprintf("client %d is served again", i), func() (err error) { name, err = whoFrom(client(i), web); return err })
		if name != home[i] {
			moved++
		}
	}
	if moved > 0 {
		t.Errorf("%d of 100 clients came back to another server after the flood\n%s", moved, logs.String())
	}
	if n := strings.Count(logs.String(), "accept failed"); n > 20 {
		t.Errorf("%d accept-failure lines: the log is not rate-limited", n)
	}
}

// writeConfig writes cfg as dir/tether.yaml and returns its path.
func writeConfig(t *testing.T, dir, cfg string) string {
	t.Helper()
	path := filepath.Join(dir, "tether.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runChild starts tether run on the config at path in a process of its
// own (this test binary, as tether), with env added; it is killed when the
// test ends. Its output goes to the returned buffer.
func runChild(t *testing.T, path string, env ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cmd := exec.Command(os.Args[0], "run", "--config", path)
	cmd.Env = append(append(os.Environ(), "TETHER_TEST_MAIN=1"), env...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, logs
}

// syncBuffer is a bytes.Buffer a child process and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
