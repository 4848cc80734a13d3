package proxy

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/hostnet"
	"github.com/tetherlb/tether/nft"
	"golang.org/x/sys/unix"
)

// markListener is the listeners (one per event loop) of one (address,
// port) of a mark class that tether serves without TPROXY (config tproxy:
// auto, nft.ListenedClasses). They are a `listen:` service's listeners
// whose connections are classified as the transparent listener's are:
// by their destination, which is the listener's own address.
type markListener struct {
	addr netip.AddrPort
	lns  []*net.TCPListener
	// stop ends the event loops' accepting; nil before start, or when a
	// goroutine accepts (wg).
	stop    func()
	wg      sync.WaitGroup
	started bool
}

// markListeners are the listeners of the classes tether listens for, by
// address; listened are those classes' marks, for the nftables rules.
// Once running, only byAddr's listeners change (startMarkListeners):
// Status reads the rest without the control loop.
type markListeners struct {
	byAddr   map[netip.AddrPort]*markListener
	listened []uint32
	// wanted are the classes the plan tried to listen for, with their
	// pairs (some may have fallen back to TPROXY: not in listened), for
	// the address watch (addrwatch.go) and Status.
	wanted map[uint32][]netip.AddrPort
	// unready says a class fell back because an address could not be
	// bound yet (EADDRNOTAVAIL: an IPv6 address in duplicate address
	// detection): the next address event tries again.
	unready bool
	// opened are the listeners a plan opened (or inherited), which its
	// abort closes; the rest are the running set's, or a stopping
	// service's sockets (the plan's handed addresses).
	opened []*markListener
}

// planMarkListeners works out the listeners cfg's classes need: kept from
// the running set by address, taken from a hot upgrade's inheritance or
// from a service of stopping (a `listen:` service whose address a class
// takes over: added to handed), or opened. A class whose listener cannot
// be opened (an address another socket holds) is TPROXYed instead, as
// every class was before tether listened for any: it costs speed, not
// service.
func (p *Proxy) planMarkListeners(cfg *config.File, stopping []*service, handed map[netip.AddrPort]bool) *markListeners {
	out := &markListeners{byAddr: map[netip.AddrPort]*markListener{}}
	if len(cfg.Marks) == 0 {
		return out
	}
	local, err := hostnet.LocalAddrs()
	if err != nil {
		p.log.Warn("the host's addresses cannot be read; every mark class is TPROXYed", "err", err)
		return out
	}
	classes := nft.ListenedClasses(cfg, func(a netip.Addr) bool { return local[a] })
	out.wanted = classes
	marks := make([]uint32, 0, len(classes))
	for m := range classes {
		marks = append(marks, m)
	}
	slices.Sort(marks)
	cur := p.marked.Load()
	for _, m := range marks {
		var opened []*markListener
		var taken []netip.AddrPort
		ok := true
		for _, ap := range classes[m] {
			if ml := cur.byAddr[ap]; ml != nil {
				out.byAddr[ap] = ml
				continue
			}
			lns := p.inherit.takeTCP(ap.String())
			if s := listening(stopping, ap); lns == nil && s != nil {
				out.byAddr[ap] = &markListener{addr: ap, lns: s.listeners()}
				taken = append(taken, ap)
				continue
			}
			if lns == nil {
				if lns, err = p.listenTCP("tcp", ap.String(), nil); err != nil {
					out.unready = out.unready || errors.Is(err, unix.EADDRNOTAVAIL)
					p.log.Warn("a mark class's address cannot be listened on; its TCP flows are TPROXYed", "fwmark", m, "listen", ap, "err", err)
					ok = false
					break
				}
			}
			ml := &markListener{addr: ap, lns: lns}
			out.byAddr[ap] = ml
			opened = append(opened, ml)
		}
		if !ok {
			for _, ml := range opened {
				ml.close()
			}
			for _, ap := range classes[m] {
				delete(out.byAddr, ap) // kept ones stay with the running set, which closes them
			}
			continue
		}
		out.listened = append(out.listened, m)
		out.opened = append(out.opened, opened...)
		for _, ap := range taken {
			handed[ap] = true
		}
	}
	return out
}

// listening is the service of services that accepts on the event loops
// at exactly ap, if any.
func listening(services []*service, ap netip.AddrPort) *service {
	for _, s := range services {
		if s.ln != nil && s.key.VIP == ap && s.stopAccept != nil {
			return s
		}
	}
	return nil
}

// abort closes what planMarkListeners opened, for a plan that is not
// applied.
func (ms *markListeners) abort() {
	if ms == nil {
		return
	}
	for _, ml := range ms.opened {
		ml.close()
	}
	ms.opened = nil
}

// swapMarkListeners makes next the running set, once the nftables rules
// that no longer TPROXY its classes are applied: the running listeners
// next does not keep are closed (the rules TPROXY those flows again, or
// no class claims them), or, at a handed address, only stop accepting:
// a new service accepts from them next. The new ones accept from
// startMarkListeners.
func (p *Proxy) swapMarkListeners(next *markListeners, handed map[netip.AddrPort]bool) {
	for ap, ml := range p.marked.Load().byAddr {
		switch {
		case next.byAddr[ap] == ml:
		case handed[ap]:
			ml.stopAccepting()
			p.handing(ap)
		default:
			ml.close()
		}
	}
	next.opened = nil
	p.marked.Store(next)
	if len(next.listened) > 0 {
		p.log.Info("mark classes served by listeners on their addresses, without TPROXY", "fwmarks", next.listened, "listeners", len(next.byAddr))
	}
}

// startMarkListeners starts accepting on the running set's new listeners,
// after commit has put their services in place.
func (p *Proxy) startMarkListeners() {
	for _, ml := range p.marked.Load().byAddr {
		if ml.started {
			continue
		}
		ml.started = true
		ml.wg.Add(1)
		s := &loopService{marked: true, dst: ml.addr}
		if ml.stop = p.listenOnLoops(ml.lns, s, func() { p.acceptMarked(&ml.wg, ml.lns[0]) }); ml.stop != nil {
			ml.wg.Done() // the loops accept: no goroutine of its own
		}
	}
}

// closeMarkListeners closes the running set (stop, or a hot upgrade's
// StopAccepting: the new process holds duplicates).
func (p *Proxy) closeMarkListeners() {
	for _, ml := range p.marked.Load().byAddr {
		ml.close()
	}
	p.marked.Store(&markListeners{})
}

// close stops accepting, closes the listeners and waits for their
// goroutine, if any.
func (ml *markListener) close() {
	ml.stopAccepting()
	for _, l := range ml.lns {
		l.Close()
	}
	ml.wg.Wait()
}

// stopAccepting takes the listeners out of the event loops: connections
// wait in their backlog. (A goroutine that accepts stops at close.)
func (ml *markListener) stopAccepting() {
	if ml.stop != nil {
		ml.stop()
		ml.stop = nil
	}
}

// handing runs the test hook, if any, at a handed address whose old owner
// has stopped accepting.
func (p *Proxy) handing(ap netip.AddrPort) {
	if p.leftHook != nil {
		p.leftHook(ap)
	}
}

// handMarkListeners hands the running set's sockets over (Handover).
func (p *Proxy) handMarkListeners(hand func(network, addr string, c syscall.Conn)) {
	for ap, ml := range p.marked.Load().byAddr {
		for _, l := range ml.lns {
			hand("tcp", ap.String(), l)
		}
	}
}

// listenedOn is where mark's class is listened for, for Status; nil when
// it is TPROXYed.
func (ms *markListeners) listenedOn(mark uint32) []string {
	if !slices.Contains(ms.listened, mark) {
		return nil
	}
	var out []string
	for _, ap := range ms.wanted[mark] {
		out = append(out, ap.String())
	}
	return out
}
