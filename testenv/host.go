package testenv

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"
)

// Host is one network namespace of an Env.
type Host struct {
	// Name is the host's name in the topology: lb, client0, backend2...
	Name string
	// NS is the namespace's name under /run/netns (ip netns exec NS ...),
	// empty when the namespace is unnamed (in a user namespace).
	NS string
	// Addrs are the host's addresses; the first is its primary one.
	// Addrs6 are its IPv6 addresses, one for each of Addrs.
	Addrs  []netip.Addr
	Addrs6 []netip.Addr

	ns  netns.NsHandle
	env *Env
}

// Do runs f with the calling goroutine's OS thread inside the host's
// namespace. Sockets f creates belong to the host for good, whichever
// thread uses them later.
func (h *Host) Do(f func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("testenv: current namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(h.ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("testenv: enter %s: %w", h.Name, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and dies with the goroutine: it must
		// never run anything else in the wrong namespace.
		return fmt.Errorf("testenv: leave %s: %w", h.Name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// FlushConntrack empties the host's conntrack table, so that what runs
// next pays for none of the flows before it (their TIME_WAIT entries
// stay two minutes).
func (h *Host) FlushConntrack() error {
	err := h.Do(func() error {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		return c.Flush()
	})
	if err != nil {
		return fmt.Errorf("testenv: flush conntrack in %s: %w", h.Name, err)
	}
	return nil
}

// Listen opens a listener inside the host.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() (err error) { ln, err = net.Listen(network, addr); return })
	return ln, err
}

// ListenPacket opens a packet socket inside the host.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := h.Do(func() (err error) { pc, err = net.ListenPacket(network, addr); return })
	return pc, err
}

// Dial connects from the host, from source address src when it is valid.
func (h *Host) Dial(ctx context.Context, network string, src netip.Addr, addr string) (net.Conn, error) {
	d := net.Dialer{}
	if src.IsValid() {
		switch {
		case strings.HasPrefix(network, "udp"):
			d.LocalAddr = &net.UDPAddr{IP: src.AsSlice()}
		default:
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
	}
	var c net.Conn
	// The socket is made inside the host; the connect may wait outside it.
	err := h.Do(func() (err error) {
		c, err = d.DialContext(ctx, network, addr)
		return
	})
	return c, err
}

// Start starts cmd inside the host. The Env stops it (SIGTERM, then
// SIGKILL) when it closes, if it is still running.
func (h *Host) Start(cmd *exec.Cmd) error {
	// Its own process group, so that Close stops its children too
	// (vsftpd forks one per session).
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	// The child is forked from this locked thread, so it is born in the
	// host's namespace.
	err := h.Do(cmd.Start)
	if err != nil {
		return fmt.Errorf("testenv: start %s in %s: %w", cmd.Path, h.Name, err)
	}
	h.env.track(cmd)
	return nil
}

// Sysctl sets a sysctl inside the host, such as "net.ipv4.ip_forward".
func (h *Host) Sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return h.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("testenv: sysctl %s=%s in %s: %w", key, value, h.Name, err)
		}
		return nil
	})
}

// Addr is the host's i-th address.
func (h *Host) Addr(i int) netip.Addr { return h.Addrs[i] }
