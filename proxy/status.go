package proxy

import (
	"fmt"
	"net/netip"

	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/udpbatch"

	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/config"
)

// Status lists the services in config order.
func (p *Proxy) Status() []api.ServiceStatus {
	cfg := p.currentCfg()
	p.svcMu.RLock()
	svcs := make([]*service, 0, len(cfg.Services))
	for _, sc := range cfg.Services {
		if s := p.services[sc.Key()]; s != nil {
			svcs = append(svcs, s)
		}
	}
	p.svcMu.RUnlock()
	counts := p.table.Counts()
	out := make([]api.ServiceStatus, 0, len(svcs))
	for _, svc := range svcs {
		st := svc.state.Load()
		c := st.cfg
		ss := api.ServiceStatus{Name: c.Name, Listen: c.Listen, Fwmark: c.Fwmark, Mode: string(c.Mode), Scheduler: string(c.Scheduler),
			Persistent: st.persistent, Quorum: c.Quorum, Quorate: st.quorate()}
		if c.Fwmark == 0 {
			ss.Protocol = string(c.Protocol)
		}
		if svc.pc != nil {
			ss.KernelDrops, _ = udpbatch.Drops(svc.rc)
		}
		for _, ul := range svc.udp {
			n, _ := udpbatch.Drops(ul.raw)
			ss.KernelDrops += n
		}
		if c.Fwmark != 0 {
			ss.Listeners = p.marked.Load().listenedOn(c.Fwmark)
		}
		if st.persistent {
			ss.Timeout = c.Persistence.Timeout.D()
			ss.Netmask, ss.Netmask6 = c.Persistence.Netmask, st.mask.Bits6()
			ss.Templates = counts[affinityID(c)]
		}
		for i, srv := range st.servers {
			ss.Servers = append(ss.Servers, p.serverStatus(svc, srv, c.Check(c.Servers[i])))
		}
		if st.sorry != nil {
			s := p.serverStatus(svc, st.sorry, nil)
			ss.Sorry = &s
		}
		out = append(out, ss)
	}
	return out
}

// serverStatus is srv's line; hc is its health check, nil for none.
func (p *Proxy) serverStatus(svc *service, srv *server, hc *config.HealthCheck) api.ServerStatus {
	s := api.ServerStatus{Address: srv.Addr.String(), Weight: srv.Weight(), ConfigWeight: int(srv.weight.Load()), State: srv.State(),
		Conns: srv.accepted.Load(), ConnectFails: srv.failed.Load(), BytesIn: srv.bytesIn.Load(), BytesOut: srv.bytesOut.Load()}
	if svc.key.UDP {
		s.InactiveConns = srv.conns.Load()
	} else {
		s.ActiveConns = srv.conns.Load()
	}
	if hc != nil {
		s.Check = string(hc.Type)
		if hs, ok := p.health.Status(checkKey{svc.key, srv.Addr}); ok && hs.LastErr != nil {
			s.CheckError = hs.LastErr.Error()
		}
	}
	return s
}

// SetServer changes a server of a running service at once; the change
// lasts until the next reload, which goes back to the file. service is a
// service's name, server its address as `tether ls` prints it.
// In a cluster the change goes to every instance.
func (p *Proxy) SetServer(service, server string, ch api.ServerChange) error {
	if err := ch.Check(); err != nil {
		return err
	}
	if err := p.control(func() error { return p.setServer(service, server, ch) }); err != nil {
		return err
	}
	if n := p.clusterNode(); n != nil {
		n.ServerChanged(service, server, ch) // an operator's change is every instance's
	}
	return nil
}

func (p *Proxy) setServer(service, server string, ch api.ServerChange) error {
	svc, srv, err := p.findServer(service, server)
	if err != nil {
		return err
	}
	st := svc.state.Load()
	was, oldWeight, wasDown := st.quorate(), srv.Weight(), srv.isDown()
	switch {
	case ch.Weight != nil:
		srv.weight.Store(int32(*ch.Weight))
		srv.drained.Store(false)
	case ch.Drain:
		srv.drained.Store(true)
	case ch.Up:
		srv.drained.Store(false)
		srv.adminDown.Store(false)
	case ch.Down:
		srv.adminDown.Store(true)
	}
	p.serverChanged(svc, srv, oldWeight, wasDown)
	p.directorFollow(svc)
	p.log.Info("real server changed by the admin API", "service", st.cfg.Name, "server", srv.Addr, "state", srv.State(), "weight", srv.Weight())
	p.quorumChanged(svc, was)
	return nil
}

// findServer resolves a service name and a server address.
func (p *Proxy) findServer(service, server string) (*service, *server, error) {
	svc := p.serviceByName(service)
	if svc == nil {
		return nil, nil, fmt.Errorf("service %q: %w", service, api.ErrNotFound)
	}
	st := svc.state.Load()
	addr, err := config.ParseServer(server)
	if err != nil {
		return nil, nil, err
	}
	srv := st.byAddr[addr]
	if srv == nil {
		return nil, nil, fmt.Errorf("server %s of service %s: %w", server, service, api.ErrNotFound)
	}
	return svc, srv, nil
}

func (p *Proxy) serviceByName(name string) *service {
	for _, s := range p.serviceList() {
		if s.state.Load().cfg.Name == name {
			return s
		}
	}
	return nil
}

// Templates lists the templates f selects.
func (p *Proxy) Templates(f api.TemplateFilter) ([]api.TemplateStatus, error) {
	af, err := p.affinityFilter(f)
	if err != nil {
		return nil, err
	}
	names := map[affinity.Service]string{}
	for _, s := range p.serviceList() {
		names[affinityID(s.state.Load().cfg)] = s.state.Load().cfg.Name
	}
	out := []api.TemplateStatus{}
	for _, t := range p.table.List(af) {
		out = append(out, api.TemplateStatus{Service: names[t.Service], Client: t.Client.String(), Server: t.Server.String(), Active: t.Active, Peers: t.Peers, Remaining: t.Remaining})
	}
	return out, nil
}

// RemoveTemplates drops the templates f selects, so their clients are
// rescheduled on their next connection; open connections are not touched.
func (p *Proxy) RemoveTemplates(f api.TemplateFilter) (int, error) {
	af, err := p.affinityFilter(f)
	if err != nil {
		return 0, err
	}
	var n int
	if c := p.clusterNode(); c != nil {
		n = c.Invalidate(af) // on every instance
	} else {
		n = p.table.Invalidate(af)
	}
	p.syncKernel() // the kernel forgets them before the command returns
	p.log.Info("persistence templates removed by the admin API", "service", f.Service, "client", f.Client, "server", f.Server, "removed", n)
	return n, nil
}

func (p *Proxy) affinityFilter(f api.TemplateFilter) (affinity.Filter, error) {
	var af affinity.Filter
	if f.Service != "" {
		svc := p.serviceByName(f.Service)
		if svc == nil {
			return af, fmt.Errorf("service %q: %w", f.Service, api.ErrNotFound)
		}
		if !svc.state.Load().persistent {
			return af, fmt.Errorf("service %q is not persistent: it has no templates", f.Service)
		}
		id := affinityID(svc.state.Load().cfg)
		af.Service = &id
	}
	if f.Client != "" {
		a, err := netip.ParseAddr(f.Client)
		if err != nil {
			return af, fmt.Errorf("client %q is not an address", f.Client)
		}
		af.Client = a.Unmap()
	}
	if f.Server != "" {
		a, err := config.ParseServer(f.Server)
		if err != nil {
			return af, err
		}
		af.Server = a
	}
	return af, nil
}
