package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
)

// Keep leaves the namespaces of e in place when the process ends (for
// `tether testenv up`): it forgets them, so Close removes nothing.
func (e *Env) Keep() {
	e.mu.Lock()
	for _, h := range e.hosts {
		h.ns.Close()
	}
	e.hosts, e.procs, e.servers = nil, nil, nil
	e.mu.Unlock()
}

// Leftovers are the named namespaces testenv made in processes that are no
// longer running: what a crashed test or `tether testenv up` left.
func Leftovers() ([]string, error) {
	ents, err := os.ReadDir("/run/netns")
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		name := e.Name()
		rest, ok := strings.CutPrefix(name, Prefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			out = append(out, name)
		}
	}
	return out, nil
}

// Remove removes a named namespace testenv made.
func Remove(name string) error {
	if !strings.HasPrefix(name, Prefix) || strings.Contains(name, "/") {
		return fmt.Errorf("testenv: %q is not a testenv namespace", name)
	}
	return netns.DeleteNamed(name)
}

// ErrNoHost: Find found no such host.
var ErrNoHost = errors.New("no such host")

// Find returns the named namespace of host in the topology that label
// names, when exactly one exists; ErrNoHost when none does.
func Find(label, host string) (string, error) {
	matches, _ := filepath.Glob(filepath.Join("/run/netns", Prefix+"*-"+label+"-"+host))
	switch len(matches) {
	case 0:
		return "", fmt.Errorf("no host %q: run tether testenv up first: %w", host, ErrNoHost)
	case 1:
		return filepath.Base(matches[0]), nil
	}
	return "", fmt.Errorf("host %q exists in %d topologies; run tether testenv down and up again", host, len(matches))
}

// Exec replaces this process with argv running in the named namespace, as
// ip netns exec does. It returns only on error.
func Exec(name string, argv []string) error {
	path, err := lookPath(argv[0])
	if err != nil {
		return err
	}
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("testenv: namespace %s: %w", name, err)
	}
	runtime.LockOSThread()
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("testenv: enter %s: %w", name, err)
	}
	return syscall.Exec(path, argv, os.Environ())
}
