package proxy

import (
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/hostnet"
	"github.com/tetherlb/tether/nft"
	"golang.org/x/sys/unix"
)

// The namespace's addresses decide which mark classes tether listens for
// (nft.ListenedClasses). A VIP often arrives after tether starts
// (keepalived's VRRP makes the host master, an interface comes up late)
// or leaves it (a failover): the address watch follows the kernel's
// address events and, when they change which classes could be listened
// for, re-applies the running configuration, as `tether reload` would, so
// that the class moves to its listeners or back to TPROXY.

// addrSettle is how long the watch waits after an address event for
// more before it looks: one change often comes as several (an address,
// its IPv6 duplicate detection, a second address).
const addrSettle = 100 * time.Millisecond

// addrWatch is the running watch.
type addrWatch struct {
	c    *netlink.Conn
	done chan struct{}
}

// startAddrWatch subscribes to the namespace's address events. Without
// them (a kernel or sandbox that refuses the subscription) classes are
// decided at start and at each reload only, and the log says so.
func (p *Proxy) startAddrWatch() {
	var c *netlink.Conn
	err := p.inNamespace(func() (err error) {
		c, err = netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR})
		return err
	})
	if err != nil {
		level := slog.LevelDebug
		if len(p.currentCfg().Marks) > 0 {
			level = slog.LevelWarn
		}
		p.log.Log(p.ctx, level, "no address events: mark classes are matched to the host's addresses at start and reload only", "err", err)
		return
	}
	if p.addrBuffer > 0 {
		c.SetReadBuffer(p.addrBuffer)
	}
	w := &addrWatch{c: c, done: make(chan struct{})}
	p.addrs = w
	go p.followAddrs(w)
}

// stopAddrWatch ends the watch and waits for it. It must not run on the
// control loop: the watch may be waiting for it.
func (p *Proxy) stopAddrWatch() {
	if w := p.addrs; w != nil {
		w.c.Close() // its Receive returns
		<-w.done
	}
}

// followAddrs waits for address events, lets them settle, and has the
// control loop look at the classes, until the connection is closed.
func (p *Proxy) followAddrs(w *addrWatch) {
	defer close(w.done)
	for {
		// ENOBUFS: events overflowed the socket while the control loop
		// was busy. Lost events lose nothing: the check reads the
		// addresses themselves.
		if _, err := w.c.Receive(); err != nil && !errors.Is(err, unix.ENOBUFS) {
			return // closed (stopAddrWatch), or the socket failed
		}
		// Drain what follows within addrSettle.
		for {
			if err := w.c.SetReadDeadline(time.Now().Add(addrSettle)); err != nil {
				return
			}
			if _, err := w.c.Receive(); err != nil && !errors.Is(err, unix.ENOBUFS) {
				break // settled (the deadline), or closed (the next call says)
			}
		}
		if err := w.c.SetReadDeadline(time.Time{}); err != nil {
			return
		}
		if p.addrHook != nil {
			p.addrHook()
		}
		if err := p.control(p.followAddrChange); err != nil {
			p.log.Warn("re-applying the configuration after an address change", "err", err)
		}
	}
}

// followAddrChange re-applies the running configuration when the host's
// addresses now allow other classes to be listened for than the last plan
// wanted, or when that plan found an address not ready to bind. On the
// control loop.
func (p *Proxy) followAddrChange() error {
	cfg := p.currentCfg()
	if p.handedOver || len(cfg.Marks) == 0 || cfg.TProxy == config.TProxyAlways {
		return nil
	}
	local, err := hostnet.LocalAddrs()
	if err != nil {
		return err
	}
	want := nft.ListenedClasses(cfg, func(a netip.Addr) bool { return local[a] })
	if cur := p.marked.Load(); maps.EqualFunc(want, cur.wanted, slices.Equal) && !cur.unready {
		return nil
	}
	p.log.Info("the host's addresses changed which mark classes tether can listen for; re-applying the configuration")
	return p.reload(cfg)
}
