package proxy

import (
	"log/slog"
	"net/netip"

	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/tcploop"
	"github.com/tetherlb/tether/udpbatch"
	"golang.org/x/sys/unix"
)

// Transparent UDP on the event loops, as UDP services (udploop.go): a
// transparent listener for each loop and address family (SO_REUSEPORT:
// the kernel's TPROXY lookup picks one of the group by a hash of the
// datagram's addresses) is read on its loop, outside the runtime's
// poller, and a flow's two sockets (bound to the VIP its client sent to,
// and to its server) are watched on the loop that read its first
// datagram. A flow closed by another goroutine is forgotten by its loop
// at its next tick.

// tudpLoop reads a transparent listener on a loop: the first datagram of
// each flow (the kernel takes its later ones to the flow's own socket).
type tudpLoop struct {
	p        *Proxy
	tp       *transparent
	addr     string // the listener's, for a hot upgrade
	raw      *rawSocket
	buf, oob []byte
	out      *udpbatch.Writer
	one      [][]byte
	watch    *tcploop.Watch // for the control loop
	// The last RecvMsg's, from recv (made once: a closure a call would
	// allocate).
	recv  func(fd uintptr)
	n, ob int
	src   netip.AddrPort
	err   error
}

// serveTransparentUDPOnLoops reads tp's UDP listeners on the event loops
// and reports false when it cannot (the loops off, or out of
// descriptors): goroutines read them then.
func (p *Proxy) serveTransparentUDPOnLoops(tp *transparent) bool {
	if p.loopCount < 0 || len(tp.ulns) == 0 {
		return false
	}
	ls, err := p.tcpLoops()
	nth := map[string]int{} // a family's listeners go to loops 0, 1, ...
	for i := 0; err == nil && i < len(tp.ulns); i++ {
		fd := -1
		rc, _ := tp.ulns[i].SyscallConn()
		if cerr := rc.Control(func(x uintptr) { fd, err = unix.FcntlInt(x, unix.F_DUPFD_CLOEXEC, 0) }); cerr != nil {
			err = cerr
		}
		if err != nil {
			break
		}
		tl := &tudpLoop{p: p, tp: tp, addr: tp.ulns[i].LocalAddr().String(), raw: &rawSocket{fd: fd}, buf: make([]byte, 64<<10), oob: make([]byte, 256), out: udpbatch.NewWriter(1), one: make([][]byte, 1)}
		tl.recv = func(fd uintptr) { tl.n, tl.ob, tl.src, tl.err = udpbatch.RecvMsg(fd, tl.buf, tl.oob) }
		tp.uloops = append(tp.uloops, tl)
		k := nth[tl.addr]
		nth[tl.addr]++
		if tl.watch, err = ls.Watch(k, fd, tl, false); err != nil {
			tp.uloops = tp.uloops[:len(tp.uloops)-1]
			tl.raw.Close()
		}
	}
	if err != nil {
		p.log.Error("the event loops cannot read the transparent UDP listeners; goroutines do", "err", err)
		tp.unwatchUDP()
		return false
	}
	for _, l := range tp.ulns {
		l.Close() // the runtime's poller forgets it; the duplicate keeps it open
	}
	tp.ulns = nil
	return true
}

// unwatchUDP takes the listeners out of their loops and closes them.
func (tp *transparent) unwatchUDP() {
	for _, tl := range tp.uloops {
		tl.watch.Do(tl.watch.Stop)
		tl.raw.Close()
	}
	tp.uloops = nil
}

// Readable reads the first datagrams of flows, a batch's worth at most.
func (tl *tudpLoop) Readable(w *tcploop.Watch) {
	for range udpBatch {
		if tl.raw.Control(tl.recv) != nil || tl.n < 0 {
			return
		}
		if tl.err != nil {
			continue
		}
		dst, mark, ok := origDst(tl.oob[:tl.ob])
		if !ok {
			continue
		}
		src := netip.AddrPortFrom(tl.src.Addr().Unmap(), tl.src.Port())
		f, err := tl.p.tflowFor(tl.tp, tflowKey{src, dst}, mark, w)
		if err != nil {
			tl.p.rlog.Log(slog.LevelDebug, "transparent udp datagram dropped", "src", src, "dst", dst, "err", err)
			continue
		}
		f.last.Store(w.Now())
		tl.one[0] = tl.buf[:tl.n]
		if tl.out.WriteToNow(f.serverRC, tl.one, nil, 0) == unix.EAGAIN {
			f.st.ev.add(evUDPDropped)
		}
	}
}

func (tl *tudpLoop) Tick(*tcploop.Watch, int64) {}

// tflowOnLoop opens f's sockets outside the runtime's poller, watches
// them next to on, and publishes the flow.
func (p *Proxy) tflowOnLoop(ft *tflows, f *tflow, on *tcploop.Watch) (*tflow, error) {
	k := f.key
	err := p.inNamespace(func() error {
		fd, err := udpbatch.DialFrom(k.dst, k.client, true)
		if err != nil {
			return err
		}
		f.clientRaw = &rawSocket{fd: fd}
		return nil
	})
	if err == nil {
		if f.serverRaw, err = p.dialRaw(serverAddr(f.srv, k.dst.Port())); err != nil {
			f.clientRaw.Close()
		}
	}
	if err != nil {
		p.release(f.srv, f.lease)
		return nil, err
	}
	f.clientRC, f.serverRC = f.clientRaw, f.serverRaw
	p.flowsTotal.Add(1)
	f.last.Store(on.Now())
	f.srv.accepted.Add(1)
	idle := f.st.cfg.Limits.IdleTimeout.D()
	if idle <= 0 {
		idle = config.DefaultUDPIdleTimeout
	}
	for _, fromClient := range []bool{true, false} {
		fl := &tflowLoop{p: p, ft: ft, f: f, fromClient: fromClient, rel: udpbatch.NewRelay(p.replies), idle: int64(idle)}
		fl.sent = func(total int) { f.Out.Add(int64(total)) }
		if fromClient {
			fl.sent = func(total int) { f.In.Add(int64(total)) }
		}
		fd := f.serverRaw.fd
		if fromClient {
			fd = f.clientRaw.fd
		}
		if _, err := on.Watch(fd, fl, true); err != nil {
			p.closeTFlow(f, "not relayed: "+err.Error()) // a watch made already forgets it at its tick
			return nil, err
		}
	}
	for _, e := range ft.Add(k, f) {
		f.st.ev.add(evUDPFlowsEvicted)
		p.closeTFlow(e, "evicted: the flow cap")
	}
	return f, nil
}

// tflowLoop relays one direction of a transparent flow on its loop; the
// client side's also ends the flow once it has been idle both ways for
// the idle timeout.
type tflowLoop struct {
	p          *Proxy
	ft         *tflows
	f          *tflow
	fromClient bool
	rel        *udpbatch.Relay
	idle       int64 // ns
	sent       func(total int)
}

func (fl *tflowLoop) Readable(w *tcploop.Watch) {
	f := fl.f
	from, to := f.serverRC, f.clientRC
	if fl.fromClient {
		from, to = f.clientRC, f.serverRC
	}
	relayNow(w, fl.rel, from, to, nil, 0, &f.closed, &f.last, f.st.ev, fl.sent)
}

func (fl *tflowLoop) Tick(w *tcploop.Watch, now int64) {
	f := fl.f
	if fl.fromClient && !f.closed.Load() && now-f.last.Load() >= fl.idle {
		fl.ft.Remove(f.key, f)
		fl.p.closeTFlow(f, "idle timeout")
	}
	if f.closed.Load() {
		w.Forget() // its close took it out of the loop's set
	}
}
