package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Templates survive a crash: tether writes its snapshot every
// snapshot_interval, so after a SIGKILL (no clean stop, no snapshot on the
// way out) a restarted tether sends every client back to its server. The
// snapshot used to be written only on a clean stop, and a kill forgot every
// client.
func TestTemplatesSurviveSIGKILL(t *testing.T) {
	dir := t.TempDir()
	snap := filepath.Join(dir, "affinity.snap")
	web := freeAddr(t)
	cfg := fmt.Sprintf(`admin: {socket: "off"}
snapshot: %s
snapshot_interval: 200ms
services:
  - name: web
    listen: %s
    scheduler: rr
    persistence: {timeout: 300s}
    servers: [{address: %s}, {address: %s}, {address: %s}]
`, snap, web, nameServer(t, "a"), nameServer(t, "b"), nameServer(t, "c"))
	path := writeConfig(t, dir, cfg)
	start := func() (*exec.Cmd, *syncBuffer) { return runChild(t, path) }
	client := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 3, byte(i / 4), byte(i%4 + 1)}) }

	first, logs := start()
	eventually(t, "tether serves web", func() error { _, err := whoFrom(client(0), web); return err })
	const clients = 100
	home := map[int]string{}
	for i := range clients {
		name, err := whoFrom(client(i), web)
		if err != nil {
			t.Fatalf("client %d: %v\n%s", i, err, logs.String())
		}
		home[i] = name
	}
	bound := time.Now()
	eventually(t, "a snapshot written after the clients bound", func() error {
		st, err := os.Stat(snap)
		if err != nil || !st.ModTime().After(bound) {
			return fmt.Errorf("no snapshot newer than the binds yet (%v)", err)
		}
		return nil
	})
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()

	_, logs = start()
	eventually(t, "the restarted tether serves web", func() error { _, err := whoFrom(client(0), web); return err })
	back := 0
	for i := range clients {
		if name, err := whoFrom(client(i), web); err == nil && name == home[i] {
			back++
		}
	}
	if back < clients { // the issue asks 99.9 %: of 100, all
		t.Errorf("%d of %d clients returned to their server after a SIGKILL and a restart\n%s", back, clients, logs.String())
	}
}
