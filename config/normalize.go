package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/sched"
)

// normalize fills in every default, so that what `tether check` prints is
// what runs. It runs only on a valid File.
func (f *File) normalize() {
	def(&f.Log.Level, "info")
	def(&f.Log.Format, "text")
	if f.AccessLog.Enabled {
		def(&f.AccessLog.Sample, 1)
	}
	def(&f.Affinity.Capacity, affinity.DefaultCapacity)
	def(&f.DrainTimeout, Duration(DefaultDrainTimeout))
	if f.Snapshot != "" {
		def(&f.SnapshotInterval, Duration(DefaultSnapshotInterval))
	}
	if len(f.Marks) > 0 {
		def(&f.TProxyPort, DefaultTProxyPort)
		def(&f.TProxy, TProxyAuto)
	}
	if len(f.TProxyIngress) > 0 {
		def(&f.TProxyRouteTable, DefaultTProxyRouteTable)
		def(&f.TProxyRulePriority, DefaultTProxyRulePriority)
	}
	def(&f.Mode, ModeProxy)
	if c := f.Cluster; c != nil {
		def(&c.Bind, DefaultClusterBind)
		def(&c.JoinTimeout, Duration(DefaultClusterJoinTimeout))
		def(&c.PushPullInterval, Duration(DefaultClusterPushPull))
	}
	director := false
	for i := range f.Services {
		s := &f.Services[i]
		def(&s.Mode, f.Mode)
		director = director || s.Mode == ModeDirector
		if s.Fwmark == 0 { // a mark service's protocols are its class's
			def(&s.Protocol, TCP)
		}
		def(&s.Scheduler, sched.Default)
		if s.Listen != "" {
			s.VIP = parsedServer(s.Listen)
			s.Listen = s.VIP.String()
		}
		if ps := s.Persistence; ps != nil {
			def(&ps.Timeout, Duration(affinity.DefaultTimeout))
			ps.Mask, _ = affinity.ParseMask(ps.Netmask, ps.Netmask6) // validated
			ps.Netmask = strings.Split(ps.Mask.String(), "/")[0]
			ps.Netmask6 = strconv.Itoa(ps.Mask.Bits6())
		}
		def(&s.Limits.ConnectTimeout, Duration(DefaultConnectTimeout))
		def(&s.Limits.ConnectAttempts, DefaultConnectAttempts)
		if s.Protocol == UDP {
			def(&s.Limits.IdleTimeout, Duration(DefaultUDPIdleTimeout))
		}
		s.HealthCheck.normalize()
		if s.SorryServer != "" {
			s.Sorry = parsedServer(s.SorryServer)
			s.SorryServer = serverString(s.Sorry)
		}
		for j := range s.Servers {
			sv := &s.Servers[j]
			sv.HealthCheck.normalize()
			if sv.Weight == nil {
				w := 1
				sv.Weight = &w
			}
			sv.Addr = parsedServer(sv.Address)
			sv.Address = serverString(sv.Addr)
		}
	}
	if director {
		d := &f.Director
		def(&d.Queues, 1)
		def(&d.QueueLength, DefaultQueueLength)
		def(&d.MarkBase, DefaultMarkBase)
		def(&d.ExpireNodest, ExpireKeep)
	}
}

// def sets *p to v when it is the zero value (unset in the file).
func def[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// normalize fills in a health check's defaults; nil stays nil.
func (hc *HealthCheck) normalize() {
	if hc == nil {
		return
	}
	def(&hc.Interval, Duration(DefaultCheckInterval))
	def(&hc.Timeout, Duration(DefaultCheckTimeout))
	def(&hc.Rise, DefaultRise)
	def(&hc.Fall, DefaultFall)
	def(&hc.Start, StartUp)
	switch hc.Type {
	case CheckSMTP:
		def(&hc.Helo, "localhost")
	case CheckDNS:
		def(&hc.QueryName, ".")
		def(&hc.QueryType, "SOA")
	}
	if hc.Type == CheckHTTP || hc.Type == CheckHTTPS {
		def(&hc.Path, "/")
		def(&hc.ExpectStatus, "200-399")
	}
}

// parsedServer is a validated address, parsed.
func parsedServer(addr string) netip.AddrPort {
	ap, _ := ParseServer(addr) // validated
	return ap
}

// serverString is a server address in normal form: IPv4-mapped addresses
// unmapped, without a port when it has none.
func serverString(ap netip.AddrPort) string {
	if ap.Port() == 0 {
		return ap.Addr().String()
	}
	return ap.String()
}

// ParseServer reads a server address: address:port, or an address alone
// (port 0: a mark service's server, which keeps the client's port).
// IPv4-mapped addresses are unmapped, so that a server has one form.
func ParseServer(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a.Unmap(), 0), nil
	}
	return netip.AddrPort{}, fmt.Errorf("server %q is not an address or address:port", s)
}
