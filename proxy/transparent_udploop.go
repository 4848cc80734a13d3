package proxy

import (
	"io"
	"log/slog"
	"net/netip"

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
	loopSocket
	p        *Proxy
	tp       *transparent
	addr     string // the listener's, for a hot upgrade
	buf, oob []byte
	out      *udpbatch.Writer
	one      [][]byte
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
	// A family's listeners go to loops 0, 1, ...
	loopOf := make([]int, len(tp.ulns))
	nth := map[string]int{}
	for i, l := range tp.ulns {
		a := l.LocalAddr().String()
		loopOf[i] = nth[a]
		nth[a]++
	}
	tls, err := watchDups(p, tp.ulns, func(i int) int { return loopOf[i] }, func(i int, raw *udpbatch.Socket) *tudpLoop {
		tl := &tudpLoop{loopSocket: loopSocket{raw: raw}, p: p, tp: tp, addr: tp.ulns[i].LocalAddr().String(), buf: make([]byte, 64<<10), oob: make([]byte, 256), out: udpbatch.NewWriter(1), one: make([][]byte, 1)}
		tl.recv = func(fd uintptr) { tl.n, tl.ob, tl.src, tl.err = udpbatch.RecvMsg(fd, tl.buf, tl.oob) }
		return tl
	})
	if err != nil {
		p.log.Error("the event loops cannot read the transparent UDP listeners; goroutines do", "err", err)
		return false
	}
	tp.ulns, tp.uloops = nil, tls
	return true
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
		if tl.out.Write(f.serverRC, tl.one) == unix.EAGAIN {
			f.st.ev.add(evUDPDropped)
		}
	}
}

func (tl *tudpLoop) Tick(*tcploop.Watch, int64) {}

// openTFlowOnLoop gives f its sockets, outside the runtime's poller, and
// watches them next to on.
func (p *Proxy) openTFlowOnLoop(ft *tflows, f *tflow, on *tcploop.Watch) error {
	k := f.key
	var client, server *udpbatch.Socket
	err := p.inNamespace(func() (err error) {
		client, err = udpbatch.DialFrom(k.dst, k.client, true)
		return err
	})
	if err == nil {
		if server, err = p.dialSocket(serverAddr(f.srv, k.dst.Port())); err != nil {
			client.Close()
		}
	}
	if err != nil {
		return err
	}
	f.clientRC, f.serverRC, f.socks = client, server, [2]io.Closer{client, server}
	idle := int64(tflowIdle(f.st))
	for _, fromClient := range []bool{true, false} {
		fl := &tflowLoop{p: p, ft: ft, f: f, fromClient: fromClient, rel: udpbatch.NewRelay(p.replies), idle: idle}
		s := server
		fl.sent = func(total int) { f.Out.Add(int64(total)) }
		if fromClient {
			s = client
			fl.sent = func(total int) { f.In.Add(int64(total)) }
		}
		if _, err := on.Watch(s.Fd(), fl, true); err != nil {
			f.closed.Store(true) // a watch made already forgets the flow at its tick
			client.Close()
			server.Close()
			return err
		}
	}
	return nil
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
