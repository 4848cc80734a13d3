package proxy

import (
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/google/nftables"
	"github.com/tetherlb/tether/affinity"
	"golang.org/x/sys/unix"
)

// A hot upgrade (tether run's SIGUSR2): the running proxy hands
// duplicates of its listening sockets to a new process (Handover), which
// starts on them (Options.Inherit) with the old one's templates
// (Options.Restore) while the old one still accepts; then the old one
// stops accepting (StopAccepting) and drains, and the new one merges the
// templates bound in between (MergeSnapshot). The sockets are never
// closed, so no connection is refused: the kernel queues what arrives
// until one process or the other accepts it.

// Inheritance is the listening sockets a new process takes over, by
// listen address (config.Service.Listen as parsed: VIP.String()). Only
// the control loop reads it.
type Inheritance struct {
	TCP map[string][]*net.TCPListener
	UDP map[string]*net.UDPConn
}

// HandedSocket is a duplicate of a listening socket, for the new process:
// a raw descriptor (close-on-exec), not an *os.File, whose Fd (and
// os/exec's ExtraFiles) would put the socket, shared with this process's
// own listener, in blocking mode.
type HandedSocket struct {
	Network string // "tcp" or "udp"
	Addr    string
	FD      int
}

// dupSocket duplicates a socket's descriptor, close-on-exec.
func dupSocket(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	cerr := rc.Control(func(fd uintptr) { nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	if cerr != nil {
		return -1, cerr
	}
	return nfd, os.NewSyscallError("fcntl", err)
}

// Handover returns duplicates of the proxy's listening sockets; the
// caller closes them once the new process has its own. The proxy goes on
// serving.
func (p *Proxy) Handover() ([]HandedSocket, error) {
	var out []HandedSocket
	var err error
	hand := func(network, addr string, c syscall.Conn) {
		if err == nil {
			var fd int
			if fd, err = dupSocket(c); err == nil {
				out = append(out, HandedSocket{network, addr, fd})
			}
		}
	}
	cerr := p.control(func() error {
		if tp := p.tp; tp != nil {
			for _, group := range tp.lns {
				for _, l := range group {
					hand("tcp", l.Addr().String(), l)
				}
			}
			// One listener an address: the new process opens the siblings.
			handed := map[string]bool{}
			for _, c := range tp.ulns {
				if a := c.LocalAddr().String(); !handed[a] {
					handed[a] = true
					hand("udp", a, c)
				}
			}
			for _, tl := range tp.uloops {
				if !handed[tl.addr] {
					handed[tl.addr] = true
					hand("udp", tl.addr, tl.raw)
				}
			}
		}
		p.handMarkListeners(hand)
		for k, s := range p.services {
			for _, l := range s.listeners() {
				hand("tcp", k.VIP.String(), l)
			}
			if s.pc != nil {
				hand("udp", k.VIP.String(), s.pc)
			} else if len(s.udp) > 0 {
				hand("udp", k.VIP.String(), s.udp[0].raw) // the new process opens its siblings
			}
		}
		return err
	})
	err = cerr
	if err != nil {
		for _, h := range out {
			unix.Close(h.FD)
		}
		return nil, fmt.Errorf("hand over the listening sockets: %w", err)
	}
	return out, nil
}

// listeners are a TCP service's listening sockets.
func (s *service) listeners() []*net.TCPListener {
	if s.ln == nil {
		return nil
	}
	return append([]*net.TCPListener{s.ln}, s.more...)
}

// StopAccepting closes the proxy's listening sockets (the new process
// holds duplicates, so the sockets stay open) and stops the periodic
// snapshot: the new process writes them now. Open connections run on;
// Shutdown then drains them and writes no snapshot.
func (p *Proxy) StopAccepting() {
	p.control(func() error {
		p.handedOver = true
		for _, s := range p.services {
			s.closeListener()
			p.closeUDP(s) // and with it its flows
		}
		if tp := p.tp; tp != nil {
			// The new process's table applies the same rules under the
			// other name: this one's goes with its socket (or, without
			// the owner flag, here). The policy routing stays: the new
			// process uses the same rules.
			p.tp = nil
			p.stopTransparent(tp)
			if tp.nft != nil {
				if p.noTableOwner {
					tp.nft.DelTable(&nftables.Table{Name: tp.table, Family: nftables.TableFamilyINet})
					tp.nft.Flush()
				}
				tp.nft.CloseLasting()
			}
		}
		p.closeMarkListeners()
		// The director's queues and tables go; the new process's, under
		// the other name and queues, steer already.
		if err := p.stopDirector(); err != nil {
			p.log.Warn("director: the old tables after a hot upgrade", "err", err)
		}
		p.stopSnapshots()
		return nil
	})
}

// SaveSnapshot writes the table's snapshot to path (atomically).
func (p *Proxy) SaveSnapshot(path string) error { return p.table.SaveSnapshot(path) }

// MergeSnapshot restores the templates of the snapshot at path that the
// table does not hold yet (a template bound here since start stays).
func (p *Proxy) MergeSnapshot(path string) (affinity.RestoreStats, error) {
	return p.table.LoadSnapshot(path)
}

// takeTCP returns the inherited listeners of addr, if any, and forgets
// them.
func (in *Inheritance) takeTCP(addr string) []*net.TCPListener {
	if in == nil {
		return nil
	}
	return take(in.TCP, addr)
}

// takeUDP is takeTCP for a UDP service's socket.
func (in *Inheritance) takeUDP(addr string) *net.UDPConn {
	if in == nil {
		return nil
	}
	return take(in.UDP, addr)
}

func take[V any](m map[string]V, key string) V {
	v := m[key]
	delete(m, key)
	return v
}

// closeRest closes the inherited sockets no service took: their addresses
// are not in this configuration.
func (in *Inheritance) closeRest() {
	if in == nil {
		return
	}
	for _, lns := range in.TCP {
		for _, l := range lns {
			l.Close()
		}
	}
	for _, c := range in.UDP {
		c.Close()
	}
	in.TCP, in.UDP = nil, nil
}
