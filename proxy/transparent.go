package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/tetherlb/tether/acceptloop"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/hostnet"
	"github.com/tetherlb/tether/marks"
	"github.com/tetherlb/tether/nft"
	"github.com/tetherlb/tether/tcploop"
	"golang.org/x/sys/unix"
)

// transparent is the data path of firewall-mark services: nftables marks
// the classes' flows and TPROXYs them to these listeners, whose accepted
// connections carry the client's original destination as local address.
type transparent struct {
	port uint16
	lns  [][]*net.TCPListener // a group per address family: a listener for each event loop
	// stops end the event loops' accepting from lns.
	stops []func()
	wg    sync.WaitGroup // accept loops
	nft   *nftables.Conn // lasting: the table is owned by its socket
	// routing is the policy routing of non-local VIPs, if any.
	routing hostnet.Routing
	// ulns and uflows are the transparent UDP listeners and flows, when a
	// class covers UDP.
	ulns   []*net.UDPConn
	uflows *tflows
	// uloops read the UDP listeners on the event loops, ulns nil then
	// (transparent_udploop.go).
	uloops []*tudpLoop
	// applied is the ruleset last applied, which the next apply updates
	// in place (nft.Ruleset.Update); nil: the table is not there.
	applied *nft.Ruleset
	// table is the name of the table (nft.MarkTables): the other one
	// while a hot upgrade's old process still holds the first.
	table string
	// started: the listeners accept (startTransparent).
	started bool
}

// openTransparent opens the IP_TRANSPARENT listeners (IPv4, and IPv6 when
// a class has IPv6 addresses). It needs CAP_NET_ADMIN.
func (p *Proxy) openTransparent(cfg *config.File, udpFlows int) (*transparent, error) {
	tp := &transparent{port: cfg.TProxyPort}
	transparent := func(network string, fd int) error {
		var err error
		if strings.HasSuffix(network, "6") {
			err = unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
		} else {
			err = unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		}
		if err != nil {
			return fmt.Errorf("IP_TRANSPARENT (needs CAP_NET_ADMIN): %w", err)
		}
		return nil
	}
	nets := []string{"tcp4"}
	for _, c := range cfg.MarkSet.Classes {
		for _, a := range c.Addrs {
			if a.Addr().Is6() && len(nets) == 1 {
				nets = append(nets, "tcp6")
			}
		}
	}
	for _, n := range nets {
		addr := fmt.Sprintf("0.0.0.0:%d", tp.port)
		if n == "tcp6" {
			addr = fmt.Sprintf("[::]:%d", tp.port)
		}
		lns, err := p.inherit.takeTCP(addr), error(nil)
		if lns == nil {
			lns, err = p.listenTCP(n, addr, transparent)
		}
		if err != nil {
			tp.close()
			if lo, hi, ok := hostnet.LocalPortRange(); ok && errors.Is(err, unix.EADDRINUSE) && int(tp.port) >= lo && int(tp.port) <= hi {
				err = fmt.Errorf("%w (tproxy_port %d is in net.ipv4.ip_local_port_range %d-%d, where outgoing connections take their ports: choose one outside it)", err, tp.port, lo, hi)
			}
			return nil, fmt.Errorf("transparent listener for mark services: %w", err)
		}
		tp.lns = append(tp.lns, lns)
	}
	if err := p.openTransparentUDP(tp, cfg, udpFlows); err != nil {
		tp.close()
		return nil, err
	}
	return tp, nil
}

// close stops the listeners and waits for their loops.
func (tp *transparent) close() {
	for _, stop := range tp.stops {
		stop()
	}
	for _, group := range tp.lns {
		for _, l := range group {
			l.Close()
		}
	}
	for _, l := range tp.ulns {
		l.Close()
	}
	closeAll(tp.uloops)
	tp.uloops = nil
	tp.wg.Wait()
}

// hasUDP says whether tp has UDP listeners.
func (tp *transparent) hasUDP() bool { return len(tp.ulns)+len(tp.uloops) > 0 }

// stopTransparent closes tp's listeners, then its UDP flows, which give
// their templates back.
func (p *Proxy) stopTransparent(tp *transparent) {
	tp.close()
	if tp.uflows != nil {
		p.closeTFlows(tp.uflows)
	}
}

// applyMarks puts the plan's mark classes in place: the nftables table
// (replaced atomically on reload) and, when they were opened by this plan,
// the transparent listeners. Without marks it removes both.
func (p *Proxy) applyMarks(pl *plan) error {
	if len(pl.cfg.Marks) == 0 {
		return p.removeMarks()
	}
	tp := p.tp
	if pl.tp != nil {
		tp = pl.tp
		if p.tp != nil {
			tp.nft, tp.table = p.tp.nft, p.tp.table
		}
	}
	if tp.nft == nil {
		c, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
		tp.nft = c
	}
	set := pl.cfg.MarkSet
	if tp.table == "" {
		tp.table = p.markTable(tp.nft)
	}
	rs := nft.Ruleset{Marks: set, TProxyPort: tp.port, Direct: nft.DirectorMarks(pl.cfg), Listened: pl.mls.listened, ACLs: nft.MarkACLs(pl.cfg), Table: tp.table}
	apply := func(owner bool) error {
		var err error
		if p.tp != nil && p.tp.applied != nil {
			err = rs.Update(tp.nft, *p.tp.applied, owner)
		} else {
			err = rs.Add(tp.nft, owner)
		}
		if err != nil {
			return err
		}
		return tp.nft.Flush()
	}
	err := apply(!p.noTableOwner)
	if err != nil && !p.noTableOwner && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
		p.log.Warn("this kernel refuses the nftables table owner flag: a killed tether will leave table inet " + tp.table + " (tether nft flush, or the next start, removes it)")
		p.noTableOwner = true
		err = apply(false)
	}
	if err != nil {
		return fmt.Errorf("apply nftables table inet %s (needs CAP_NET_ADMIN, nf_tables and nft_tproxy): %w", tp.table, err)
	}
	tp.applied = &rs
	routing := hostnet.Routing{Ingress: pl.cfg.TProxyIngress, Table: pl.cfg.TProxyRouteTable, Priority: pl.cfg.TProxyRulePriority}
	old := tp.routing
	if pl.tp != nil && p.tp != nil {
		old = p.tp.routing // tp is new listeners: the rules are the old ones'
	}
	if len(old.Ingress) > 0 && (old.Table != routing.Table || old.Priority != routing.Priority || len(routing.Ingress) == 0) {
		// Another table or priority: Apply would not see the old rules.
		if err := old.Remove(); err != nil {
			return err
		}
	}
	tp.routing = routing
	if err := tp.routing.Apply(set); err != nil {
		return err
	}
	p.markSet.Store(&set)
	if pl.tp != nil {
		pl.tp = nil // committed: abort must not close it now
		if old := p.tp; old != nil {
			old.nft = nil
			p.stopTransparent(old)
		}
		p.tp = tp // accepting starts once the services are in place (startTransparent)
		p.log.Info("firewall-mark services: nftables table applied, transparent listener open", "port", tp.port, "classes", len(set.Classes))
		// On the namespace thread: /proc/sys/net follows it. Only when
		// something is TPROXYed: listened classes do not care.
		if len(rs.Listened) < len(set.Classes) || coversUDP(pl.cfg) {
			hostnet.CheckTProxy(p.log)
		}
	}
	return nil
}

// startTransparent starts accepting on the transparent listeners, once:
// after commit has put the mark services in place, so that a connection
// already waiting on them (a hot upgrade's inherited listeners) finds its
// service.
func (p *Proxy) startTransparent() {
	tp := p.tp
	if tp == nil || tp.started {
		return
	}
	tp.started = true
	for _, group := range tp.lns {
		tp.wg.Add(1)
		if stop := p.listenOnLoops(group, &loopService{marked: true}, func() { p.acceptMarked(&tp.wg, group[0]) }); stop != nil {
			tp.wg.Done() // the loops accept: no goroutine of its own
			tp.stops = append(tp.stops, stop)
		}
	}
	if p.serveTransparentUDPOnLoops(tp) {
		return
	}
	for _, l := range tp.ulns {
		tp.wg.Add(1)
		go p.serveTransparentUDP(tp, l)
	}
}

// markTable chooses the marks table's name at start. A hot upgrade's new
// process takes the name the old one does not hold, so that both tables
// apply until the old one's goes with its process. Otherwise it is
// nft.TableName, and a table of either name an earlier tether left (one
// that died on a kernel without the owner flag, or stopped uncleanly) is
// removed: the apply's batch replaces one of the same name, the other is
// deleted here.
func (p *Proxy) markTable(c *nftables.Conn) string {
	have := map[string]bool{}
	if tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet); err == nil {
		for _, t := range tables {
			have[t.Name] = true
		}
	}
	if p.inherit != nil {
		for _, name := range nft.MarkTables {
			if !have[name] {
				return name
			}
		}
	}
	for _, name := range nft.MarkTables {
		if !have[name] {
			continue
		}
		p.log.Warn("removing the table inet " + name + " an earlier tether left")
		if name != nft.TableName {
			c.DelTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
			if err := c.Flush(); err != nil {
				p.log.Warn("the table inet "+name+" could not be removed", "err", err)
			}
		}
	}
	return nft.TableName
}

// removeMarks deletes tether's table and closes the transparent listeners.
func (p *Proxy) removeMarks() error {
	tp := p.tp
	if tp == nil {
		return nil
	}
	p.tp = nil
	p.stopTransparent(tp)
	err := tp.routing.Remove()
	if tp.nft != nil {
		tp.nft.DelTable(&nftables.Table{Name: tp.table, Family: nftables.TableFamilyINet})
		err = errors.Join(err, tp.nft.Flush(), tp.nft.CloseLasting())
	}
	return err
}

// acceptMarked accepts TPROXYed connections (or those of a listened
// class) until l is closed, and serves each as a connection of the mark
// service it classifies to. It marks wg done when it returns.
func (p *Proxy) acceptMarked(wg *sync.WaitGroup, l *net.TCPListener) {
	defer wg.Done()
	acceptloop.Loop{
		Accept: l.AcceptTCP,
		Serve: func(c *net.TCPConn) {
			svc, dport := p.classify(c)
			if svc == nil {
				p.ev.add(evUnclassified)
				c.Close()
				return
			}
			p.conns.wg.Add(1)
			go p.serveTCP(svc, c, dport)
		},
		Failed: p.acceptFailed("transparent " + l.Addr().String()),
		Sleep:  time.Sleep,
	}.Run()
}

// classify finds the mark service of a TPROXYed connection by its
// original destination (its local address), which the classes match
// exactly as the nftables rules did: they are tether's own and claim
// disjoint (protocol, address, port)s. Not by the socket's mark, which
// would cost a getsockopt a connection (and net.ipv4.tcp_fwmark_accept=1)
// to say the same: the mark service's CPU a connection fell 3-4 % without
// it (README, Firewall-mark services).
func (p *Proxy) classify(c *net.TCPConn) (*service, uint16) {
	return p.classifyTo(c.RemoteAddr().(*net.TCPAddr).AddrPort(), c.LocalAddr().(*net.TCPAddr).AddrPort())
}

// classifyConn is classify for a connection on the event loops. dst, when
// valid, is its listener's address (a listened class), which saves the
// getsockname.
func (p *Proxy) classifyConn(c *tcploop.Conn, dst netip.AddrPort) (*service, uint16) {
	if !dst.IsValid() {
		var err error
		if dst, err = c.Local(); err != nil {
			return nil, 0
		}
	}
	return p.classifyTo(c.Src(), dst)
}

// classifyTo finds the mark service of a connection from src to dst.
func (p *Proxy) classifyTo(src, dst netip.AddrPort) (*service, uint16) {
	cl, ok := p.markSet.Load().Match(marks.TCP, dst.Addr(), dst.Port())
	if !ok {
		p.rlog.Log(slog.LevelWarn, "transparent connection matches no mark class", "dst", dst, "src", src)
		return nil, 0
	}
	p.svcMu.RLock()
	svc := p.services[config.ServiceKey{Mark: cl.Mark}]
	p.svcMu.RUnlock()
	if svc == nil {
		p.rlog.Log(slog.LevelWarn, "no service for firewall mark", "fwmark", cl.Mark, "dst", dst)
	}
	return svc, dst.Port()
}

// serverAddr is where to dial a server: a mark service's server without a
// port takes the client's original destination port (IPVS's rule).
func serverAddr(s *server, dport uint16) netip.AddrPort {
	if s.Addr.Port() == 0 && dport != 0 {
		return netip.AddrPortFrom(s.Addr.Addr(), dport)
	}
	return s.Addr
}
