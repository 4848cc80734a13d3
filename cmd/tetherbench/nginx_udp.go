package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// startNginxUDP runs nginx stream on loopback as the UDP table's peer,
// configured as tether's UDP service is: the client's address picks the
// server (hash $remote_addr consistent), a client's datagrams are one
// session until it is idle, every reply goes back. It returns the address
// it listens on and the function that stops it.
func startNginxUDP(ctx context.Context, dir, server string) (string, func(), error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/nginx"); err != nil {
			return "", nil, errors.New("nginx is not installed (apt-get install nginx libnginx-mod-stream)")
		}
	}
	listen, err := freeUDPAddr()
	if err != nil {
		return "", nil, err
	}
	ndir := filepath.Join(dir, "nginx-udp")
	if err := os.MkdirAll(ndir, 0o700); err != nil {
		return "", nil, err
	}
	f := filepath.Join(ndir, "nginx.conf")
	// A session lasts until it is idle for 10 s, as tether's flow until its
	// idle timeout; every reply goes back (no proxy_responses).
	conf := strings.Replace(nginxConfig(ndir, server, listen+" udp"), "proxy_pass bench;", "proxy_pass bench; proxy_timeout 10s;", 1)
	if err := os.WriteFile(f, []byte(conf), 0o600); err != nil {
		return "", nil, err
	}
	cmd := exec.CommandContext(ctx, bin, "-p", ndir, "-c", f)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	// Up when a datagram comes back through it.
	for deadline := time.Now().Add(5 * time.Second); ; {
		if r, err := udpRate(listen, 8, 1, 1, 100*time.Millisecond); err == nil && r > 0 {
			return listen, stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("nginx did not come up: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
