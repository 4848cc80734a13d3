package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tetherlb/tether/proxy"
	"golang.org/x/sys/unix"
)

// The hot upgrade (SIGUSR2, as nginx's): the running tether writes its
// templates, starts its own binary anew (os.Args[0]: the file an upgrade
// replaced) with duplicates of its listening sockets (HAProxy's -x hands
// them over a unix socket; here they are inherited, as nginx does), and
// waits until the new process serves. Until then nothing has changed: a
// new binary that fails to start is killed and the old one serves on.
// Then the old one stops accepting, releases the admin socket and the
// metrics address, writes the templates bound meanwhile and tells the new
// one, which merges them and takes the admin socket; the old one drains
// its connections and exits. The kernel queues connections on the shared
// sockets throughout: none is refused.

// upgradeEnv carries upgradeState to the new process.
const upgradeEnv = "TETHER_UPGRADE"

// upgradeTimeout bounds the wait for each step of the other process.
const upgradeTimeout = 30 * time.Second

// upgradeState is what the new process inherits: its descriptors are
// ExtraFiles (3 is the control socket, the sockets follow).
type upgradeState struct {
	Snapshot string            `json:"snapshot"`
	Sockets  []inheritedSocket `json:"sockets"`
}

type inheritedSocket struct {
	Network string `json:"network"`
	Addr    string `json:"addr"`
	FD      int    `json:"fd"`
}

// upgradeChild is the new process, seen from the old one.
type upgradeChild struct {
	pid int
	ctl net.Conn
}

// startUpgrade starts the new process on duplicates of p's sockets and
// returns once it serves; on an error nothing has changed. It forks with
// raw descriptors (syscall.ForkExec): os/exec's ExtraFiles would put
// every shared socket in blocking mode, this process's listeners with it.
func startUpgrade(log *slog.Logger, p *proxy.Proxy) (*upgradeChild, error) {
	socks, err := p.Handover()
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, s := range socks {
			unix.Close(s.FD) // the new process has its own copies
		}
	}()
	snap, err := tempSnapshot(p)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*upgradeChild, error) {
		os.Remove(snap)
		return nil, err
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(os.NewSyscallError("socketpair", err))
	}
	theirs := fds[1]
	mine := os.NewFile(uintptr(fds[0]), "upgrade")
	ctl, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		unix.Close(theirs)
		return fail(err)
	}
	st := upgradeState{Snapshot: snap}
	files := []uintptr{0, 1, 2, uintptr(theirs)}
	for _, s := range socks {
		st.Sockets = append(st.Sockets, inheritedSocket{s.Network, s.Addr, len(files)})
		files = append(files, uintptr(s.FD))
	}
	js, _ := json.Marshal(st)
	bin, err := exec.LookPath(os.Args[0])
	if err == nil {
		bin, err = filepath.Abs(bin)
	}
	if err != nil {
		unix.Close(theirs)
		ctl.Close()
		return fail(fmt.Errorf("the new binary: %w", err))
	}
	log.Info("upgrade: starting the new binary on this process's sockets", "binary", bin, "sockets", len(socks))
	pid, err := syscall.ForkExec(bin, os.Args, &syscall.ProcAttr{Env: append(os.Environ(), upgradeEnv+"="+string(js)), Files: files})
	unix.Close(theirs) // the child's copy is all there is: its exit is an EOF here
	if err != nil {
		ctl.Close()
		return fail(fmt.Errorf("start %s: %w", bin, err))
	}
	proc, _ := os.FindProcess(pid) // cannot fail on Unix
	exited := make(chan struct{})
	go func() { proc.Wait(); close(exited) }() // reaped if it exits before this process
	ctl.SetReadDeadline(time.Now().Add(upgradeTimeout))
	line, err := bufio.NewReader(ctl).ReadString('\n')
	if err != nil || line != "ready\n" {
		proc.Kill()
		<-exited
		ctl.Close()
		if err == nil {
			err = fmt.Errorf("it said %q", line)
		}
		return fail(fmt.Errorf("the new process did not come up (its log says why): %w", err))
	}
	return &upgradeChild{pid: pid, ctl: ctl}, nil
}

// handOver writes the templates bound since the first snapshot and tells
// the new process to take over.
func (c *upgradeChild) handOver(log *slog.Logger, p *proxy.Proxy) {
	defer c.ctl.Close()
	snap, err := tempSnapshot(p)
	if err != nil {
		log.Error("upgrade: the last templates not written; the new process has those of its start", "err", err)
	}
	c.ctl.SetWriteDeadline(time.Now().Add(upgradeTimeout))
	if _, err := fmt.Fprintf(c.ctl, "go %s\n", snap); err != nil {
		log.Error("upgrade: the new process was not told to take over", "err", err)
	}
}

// tempSnapshot writes p's templates to a new file of its own.
func tempSnapshot(p *proxy.Proxy) (string, error) {
	f, err := os.CreateTemp("", "tether-upgrade-*.snap")
	if err != nil {
		return "", fmt.Errorf("upgrade snapshot: %w", err)
	}
	f.Close()
	if err := p.SaveSnapshot(f.Name()); err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("upgrade snapshot: %w", err)
	}
	return f.Name(), nil
}

// upgrade is the new process's side.
type upgrade struct {
	snapshot string
	inherit  *proxy.Inheritance
	ctl      net.Conn
}

// takeUpgrade reads what an upgrading tether handed this process; nil
// when it was started otherwise.
func takeUpgrade() (*upgrade, error) {
	js, ok := os.LookupEnv(upgradeEnv)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(upgradeEnv) // not for this process's own upgrades
	var st upgradeState
	if err := json.Unmarshal([]byte(js), &st); err != nil {
		return nil, fmt.Errorf("%s: %w", upgradeEnv, err)
	}
	u := &upgrade{snapshot: st.Snapshot, inherit: &proxy.Inheritance{TCP: map[string][]*net.TCPListener{}, UDP: map[string]*net.UDPConn{}}}
	f := os.NewFile(3, "upgrade")
	ctl, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: the control socket: %w", upgradeEnv, err)
	}
	u.ctl = ctl
	for _, s := range st.Sockets {
		f := os.NewFile(uintptr(s.FD), s.Addr)
		switch s.Network {
		case "tcp":
			l, err := net.FileListener(f)
			if err != nil {
				return nil, fmt.Errorf("%s: socket %s: %w", upgradeEnv, s.Addr, err)
			}
			u.inherit.TCP[s.Addr] = append(u.inherit.TCP[s.Addr], l.(*net.TCPListener))
		case "udp":
			c, err := net.FilePacketConn(f)
			if err != nil {
				return nil, fmt.Errorf("%s: socket %s: %w", upgradeEnv, s.Addr, err)
			}
			u.inherit.UDP[s.Addr] = c.(*net.UDPConn)
		default:
			return nil, fmt.Errorf("%s: socket %s: network %q", upgradeEnv, s.Addr, s.Network)
		}
		f.Close() // the listener holds a copy
	}
	return u, nil
}

// serving tells the old process this one serves, waits until it has
// stopped accepting, and merges the templates it bound meanwhile. An old
// process that went away is not waited for.
func (u *upgrade) serving(log *slog.Logger, p *proxy.Proxy) {
	os.Remove(u.snapshot)
	if _, err := u.ctl.Write([]byte("ready\n")); err != nil {
		log.Warn("upgrade: the old process is gone", "err", err)
		return
	}
	u.ctl.SetReadDeadline(time.Now().Add(upgradeTimeout))
	line, err := bufio.NewReader(u.ctl).ReadString('\n')
	path, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "go ")
	if err != nil || !ok {
		log.Warn("upgrade: the old process did not hand over; serving without its last templates", "err", errors.Join(err, fmt.Errorf("it said %q", line)))
		return
	}
	if path == "" {
		return
	}
	defer os.Remove(path)
	st, err := p.MergeSnapshot(path)
	if err != nil {
		log.Error("upgrade: the old process's last templates not merged", "err", err)
		return
	}
	log.Info("upgrade: took over from the old process", "templates_merged", st.Restored)
}

func (u *upgrade) close() { u.ctl.Close() }
