package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherlb/tether/proxy"
)

// Under systemd (Type=notify) tether says when it is ready, when a reload
// starts (with the monotonic clock systemd asks for) and ends, and when
// it stops.
func TestRunNotifiesTheServiceManager(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify.sock")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	path := filepath.Join(dir, "tether.yaml")
	cfg := fmt.Sprintf("admin: {socket: %s}\nservices:\n  - {name: web, listen: %s, servers: [{address: %s}]}\n", filepath.Join(dir, "admin.sock"), freeAddr(t), nameServer(t, "a"))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	next := func() string {
		t.Helper()
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 512)
		n, err := nc.Read(b)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(b[:n])
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reload := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), path, reload, nil, proxy.Options{})
	}()

	if got, want := next(), fmt.Sprintf("READY=1\nSTATUS=serving 1 services\nMAINPID=%d", os.Getpid()); got != want {
		t.Errorf("at start: %q", got)
	}
	reload <- syscall.SIGHUP
	if got := next(); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") || len(got) < len("RELOADING=1\nMONOTONIC_USEC=1") {
		t.Errorf("a reload starts: %q", got)
	}
	if got := next(); got != "READY=1" {
		t.Errorf("a reload ends: %q", got)
	}
	cancel()
	if got := next(); got != "STOPPING=1" {
		t.Errorf("at stop: %q", got)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
