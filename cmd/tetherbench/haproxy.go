package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// runHAProxy measures HAProxy in TCP mode with splice and a stick table on
// the source (the peer of the namespace table), the setup tether's users
// replace, when it is installed.
func runHAProxy(ctx context.Context, dir, backend string, dur time.Duration) (column, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return column{}, errors.New("haproxy is not installed (apt-get install haproxy)")
	}
	listen, err := freeAddr()
	if err != nil {
		return column{}, err
	}
	_, args := peers[0].config(dir, listen, backend) // the namespace table's HAProxy, on loopback
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return column{}, err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	if err := waitListening(listen); err != nil {
		return column{}, fmt.Errorf("%w: %s", err, stderr.String())
	}
	r, err := measure(loopback(listen), dur)
	if err != nil {
		return column{}, err
	}
	mem, _ := readMemory(cmd.Process.Pid)
	return column{"HAProxy " + haproxyVersion(bin), r, mem}, nil
}

func haproxyVersion(bin string) string {
	out, _ := exec.Command(bin, "-v").Output()
	if f := strings.Fields(string(out)); len(f) > 2 {
		return strings.SplitN(f[2], "-", 2)[0]
	}
	return ""
}
