package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetherlb/tether/accesslog"
	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/lruset"
	"github.com/tetherlb/tether/marks"
	"github.com/tetherlb/tether/tcploop"
	"github.com/tetherlb/tether/udpbatch"
	"golang.org/x/sys/unix"
)

// Transparent UDP, for the UDP flows of mark classes. nftables TPROXYs
// them to a socket with IP_TRANSPARENT and IP_RECVORIGDSTADDR, which tells
// each datagram's original destination. A flow (client, original
// destination) gets a socket bound to that destination and connected to
// the client: replies leave from the VIP:port the client sent to, and the
// kernel's TPROXY lookup delivers the client's next datagrams straight to
// it. Templates are keyed by the mark, as for TCP, so a mark that covers
// both protocols keeps a client on one server over both.

type tflowKey struct{ client, dst netip.AddrPort }

type tflow struct {
	key    tflowKey
	srv    *server
	st     *serviceState
	lease  affinity.Lease
	client *net.UDPConn // bound to dst, connected to the client (goroutines' flows)
	server *net.UDPConn
	// socks are the client's and the server's sockets: client and
	// server, or an event loop's udpbatch.Sockets
	// (transparent_udploop.go), client and server nil then.
	socks [2]io.Closer
	// clientRC and serverRC are their raw sockets, for recvmmsg and
	// sendmmsg.
	clientRC, serverRC syscall.RawConn
	last               atomic.Int64
	closed             atomic.Bool
	accesslog.Counts   // for the access log
}

// tflows are the transparent UDP flows, and the goroutines that relay them.
type tflows struct {
	*lruset.Set[tflowKey, *tflow]
	wg sync.WaitGroup
}

func newTFlows(size int) *tflows {
	return &tflows{Set: lruset.New[tflowKey, *tflow](size)}
}

// transparentUDPControl makes a socket transparent (it may bind and send
// from any address), reusable, and, for listeners, told each datagram's
// original destination, and with siblings (SO_REUSEPORT: a listener for
// each event loop).
func transparentUDPControl(recvOrigDst bool) func(network, address string, c syscall.RawConn) error {
	return func(network, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			set := func(level, opt int) {
				if serr == nil {
					serr = unix.SetsockoptInt(int(fd), level, opt, 1)
				}
			}
			set(unix.SOL_SOCKET, unix.SO_REUSEADDR)
			if recvOrigDst {
				set(unix.SOL_SOCKET, unix.SO_REUSEPORT)
				// Each datagram's mark as control data (Linux 5.19+;
				// without it tether classifies by destination).
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVMARK, 1)
			}
			if strings.HasSuffix(network, "6") {
				set(unix.SOL_IPV6, unix.IPV6_TRANSPARENT)
				if recvOrigDst {
					set(unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR)
				}
			} else {
				set(unix.SOL_IP, unix.IP_TRANSPARENT)
				if recvOrigDst {
					set(unix.SOL_IP, unix.IP_RECVORIGDSTADDR)
				}
			}
		})
		if err == nil && serr != nil {
			err = fmt.Errorf("transparent udp socket (needs CAP_NET_ADMIN): %w", serr)
		}
		return err
	}
}

// openTransparentUDP opens the UDP listeners when a class covers UDP.
func (p *Proxy) openTransparentUDP(tp *transparent, cfg *config.File, udpFlows int) error {
	nets := map[string]bool{}
	for _, c := range cfg.MarkSet.Classes {
		if c.Protocols&marks.UDP == 0 {
			continue
		}
		for _, a := range c.Addrs {
			nets[map[bool]string{true: "udp4", false: "udp6"}[a.Addr().Is4()]] = true
		}
	}
	// With the event loops, a listener for each loop: the kernel's
	// TPROXY lookup picks one of a SO_REUSEPORT group by a hash of the
	// datagram's addresses, so flows spread over the loops.
	lc := net.ListenConfig{Control: transparentUDPControl(true)}
	for _, n := range []string{"udp4", "udp6"} {
		if !nets[n] {
			continue
		}
		addr := fmt.Sprintf("0.0.0.0:%d", tp.port)
		if n == "udp6" {
			addr = fmt.Sprintf("[::]:%d", tp.port)
		}
		pcs, err := p.listenUDPGroup(lc, n, addr)
		if err != nil {
			return fmt.Errorf("transparent udp listener for mark services: %w", err)
		}
		tp.ulns = append(tp.ulns, pcs...)
	}
	if len(tp.ulns) > 0 {
		tp.uflows = newTFlows(udpFlows)
	}
	return nil
}

// origDst reads a datagram's original destination (IP_ORIGDSTADDR or
// IPV6_ORIGDSTADDR) and its mark (SO_MARK, with SO_RCVMARK; 0 if absent)
// from its control data.
func origDst(oob []byte) (dst netip.AddrPort, mark uint32, ok bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, 0, false
	}
	for _, m := range msgs {
		d := m.Data
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(d) >= 8:
			dst, ok = netip.AddrPortFrom(netip.AddrFrom4([4]byte(d[4:8])), binary.BigEndian.Uint16(d[2:4])), true
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(d) >= 24:
			dst, ok = netip.AddrPortFrom(netip.AddrFrom16([16]byte(d[8:24])).Unmap(), binary.BigEndian.Uint16(d[2:4])), true
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_MARK && len(d) >= 4:
			mark = binary.NativeEndian.Uint32(d)
		}
	}
	return dst, mark, ok
}

// serveTransparentUDP reads the first datagrams of flows (later ones go to
// the flows' own sockets) until the listener closes.
func (p *Proxy) serveTransparentUDP(tp *transparent, l *net.UDPConn) {
	defer tp.wg.Done()
	buf, oob := make([]byte, 64<<10), make([]byte, 256)
	for {
		n, oobn, _, src, err := l.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		dst, mark, ok := origDst(oob[:oobn])
		if !ok {
			continue
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		f, err := p.tflowFor(tp, tflowKey{src, dst}, mark, nil)
		if err != nil {
			p.rlog.Log(slog.LevelDebug, "transparent udp datagram dropped", "src", src, "dst", dst, "err", err)
			continue
		}
		f.last.Store(time.Now().UnixNano())
		f.server.Write(buf[:n])
	}
}

// tflowFor returns the flow of k, making it when there is none: its
// service is the datagram's mark, or else the class its destination
// matches. A new flow's sockets are watched next to on, on its event
// loop, or (on nil) relayed by goroutines of their own.
func (p *Proxy) tflowFor(tp *transparent, k tflowKey, mark uint32, on *tcploop.Watch) (*tflow, error) {
	ft := tp.uflows
	f, ok := ft.Get(k)
	if ok && !f.closed.Load() {
		return f, nil
	}
	set := p.markSet.Load()
	if mark &= set.MarkMask(); mark == 0 {
		cl, ok := set.Match(marks.UDP, k.dst.Addr(), k.dst.Port())
		if !ok {
			return nil, errors.New("no mark class")
		}
		mark = cl.Mark
	}
	p.svcMu.RLock()
	svc := p.services[config.ServiceKey{Mark: mark}]
	p.svcMu.RUnlock()
	if svc == nil {
		return nil, fmt.Errorf("no service for mark %d", mark)
	}
	st := svc.state.Load()
	if !st.cfg.Admits(k.client.Addr()) {
		st.ev.add(evUDPDenied)
		return nil, errDenied
	}
	if !roomForFlow(p, ft.Set, p.closeTFlow) {
		return nil, errors.New("udp_max_flows reached")
	}
	ch, err := p.choose(st, k.client.Addr(), nil)
	if err != nil {
		return nil, err
	}
	srv, lease := ch.srv, ch.lease
	f = &tflow{key: k, srv: srv, st: ch.st, lease: lease}
	f.Start = p.accessLogging()
	f.last.Store(time.Now().UnixNano())
	if on != nil {
		err = p.openTFlowOnLoop(ft, f, on)
	} else {
		err = p.openTFlow(ft, f)
	}
	if err != nil {
		p.release(srv, lease)
		return nil, err
	}
	p.flowsTotal.Add(1)
	srv.accepted.Add(1)
	for _, e := range ft.Add(k, f) { // complete before it is published
		st.ev.add(evUDPFlowsEvicted)
		p.closeTFlow(e, "evicted: the flow cap")
	}
	return f, nil
}

// tflowIdle is how long a transparent flow of st lives without traffic.
func tflowIdle(st *serviceState) time.Duration {
	if idle := st.cfg.Limits.IdleTimeout.D(); idle > 0 {
		return idle
	}
	return config.DefaultUDPIdleTimeout
}

// openTFlow gives f its sockets, and a goroutine for each direction.
func (p *Proxy) openTFlow(ft *tflows, f *tflow) error {
	k := f.key
	err := p.inNamespace(func() error {
		d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(k.dst), Control: transparentUDPControl(false)}
		c, err := d.DialContext(p.ctx, "udp", k.client.String())
		if err != nil {
			return err
		}
		f.client = c.(*net.UDPConn)
		return nil
	})
	if err == nil {
		f.server, err = p.dialUDP(f.st, serverAddr(f.srv, k.dst.Port()))
	}
	if err == nil {
		if f.clientRC, err = f.client.SyscallConn(); err == nil {
			f.serverRC, err = f.server.SyscallConn()
		}
		if err != nil {
			f.server.Close()
		}
	}
	if err != nil {
		if f.client != nil {
			f.client.Close()
		}
		return err
	}
	f.socks = [2]io.Closer{f.client, f.server}
	ft.wg.Add(2)
	go func() { defer ft.wg.Done(); p.tflowCopy(ft, f, f.server, f.serverRC, f.clientRC) }()
	go func() { defer ft.wg.Done(); p.tflowCopy(ft, f, f.client, f.clientRC, f.serverRC) }()
	return nil
}

// tflowCopy relays one direction of a flow, a batch a call (batchRelay),
// until it has been idle both ways for the idle timeout, or is closed.
func (p *Proxy) tflowCopy(ft *tflows, f *tflow, from *net.UDPConn, fromRC, toRC syscall.RawConn) {
	idle := tflowIdle(f.st)
	rel := udpbatch.NewRelay(p.replies)
	armIdle(from, &f.last, idle) // f.last is shared: traffic either way counts
	for {
		bufs, total, out, err := rel.Next(fromRC)
		if err != nil {
			if f.closed.Load() {
				return
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) || armIdle(from, &f.last, idle) {
				continue
			}
			ft.Remove(f.key, f)
			p.closeTFlow(f, "idle timeout")
			return
		}
		f.last.Store(time.Now().UnixNano())
		if from == f.client {
			f.In.Add(int64(total))
		} else {
			f.Out.Add(int64(total))
		}
		out.Write(toRC, bufs)
		rel.Done()
	}
}

// closeTFlow ends a transparent flow once; end says why, for the access
// log.
func (p *Proxy) closeTFlow(f *tflow, end string) {
	if f.closed.Swap(true) {
		return
	}
	p.flowsTotal.Add(-1)
	for _, s := range f.socks {
		s.Close()
	}
	p.release(f.srv, f.lease)
	p.accessLog(f.st, "udp", f.key.client, serverAddr(f.srv, f.key.dst.Port()), &f.Counts, end)
}

// closeTFlows ends every transparent flow and waits for their goroutines.
func (p *Proxy) closeTFlows(ft *tflows) {
	for _, f := range ft.Drain() {
		p.closeTFlow(f, "stopped")
	}
	ft.wg.Wait()
}
