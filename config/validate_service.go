package config

import (
	"encoding/hex"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/sched"
)

func (v *validator) checkService(p string, s *Service, names, listens map[string]string) {
	switch {
	case s.Name == "":
		v.errf(p+".name", "missing: every service needs a name")
	case names[s.Name] != "":
		v.errf(p+".name", "duplicate service name %q (also %s)", s.Name, names[s.Name])
	default:
		names[s.Name] = p
	}
	switch s.Protocol {
	case "", TCP:
		if s.OnePacket {
			v.errf(p+".one_packet", "is for udp services")
		}
	case UDP:
		if s.Fwmark != 0 {
			v.errf(p+".protocol", "a mark service takes its protocols from its class: leave protocol out")
		}
	default:
		v.errf(p+".protocol", "%q is not tcp or udp", s.Protocol)
	}
	v.checkSendProxy(p, s, s.SendProxy, p+".send_proxy")
	for j, sv := range s.Servers {
		v.checkSendProxy(p, s, sv.SendProxy, fmt.Sprintf("%s.servers[%d].send_proxy", p, j))
	}
	var err error
	if s.AcceptProxyNets, err = parseNets(s.AcceptProxy); err != nil {
		v.errf(p+".accept_proxy", "%v", err)
	} else if len(s.AcceptProxy) > 0 && (s.Protocol == UDP || s.Mode == ModeDirector) {
		v.errf(p+".accept_proxy", "is for TCP services in the socket proxy")
	}
	if s.AllowNets, err = parseNets(s.Allow); err != nil {
		v.errf(p+".allow", "%v", err)
	}
	if s.DenyNets, err = parseNets(s.Deny); err != nil {
		v.errf(p+".deny", "%v", err)
	}
	if s.Limits.MaxFlows < 0 {
		v.errf(p+".limits.max_flows", "is negative")
	}
	switch s.Mode {
	case "", ModeProxy:
	case ModeDirector:
		if s.OnePacket {
			v.errf(p+".one_packet", "is for the socket proxy: the director keeps each flow in conntrack")
		}
		if vip, err := netip.ParseAddrPort(s.Listen); err == nil {
			for j, sv := range s.Servers {
				if a, err := netip.ParseAddrPort(sv.Address); err == nil && a.Addr().Unmap().Is4() != vip.Addr().Unmap().Is4() {
					v.errf(fmt.Sprintf("%s.servers[%d].address", p, j), "%s: the director rewrites addresses and cannot cross from an %s VIP to an %s server (the socket proxy can)", sv.Address, family(vip.Addr()), family(a.Addr()))
				}
			}
			if a, err := netip.ParseAddrPort(s.SorryServer); err == nil && a.Addr().Unmap().Is4() != vip.Addr().Unmap().Is4() {
				v.errf(p+".sorry_server", "%s: the director cannot cross from an %s VIP to an %s server", s.SorryServer, family(vip.Addr()), family(a.Addr()))
			}
		}
	default:
		v.errf(p+".mode", "%q is not proxy or director", s.Mode)
	}
	switch {
	case s.Listen != "" && s.Fwmark != 0:
		v.errf(p+".fwmark", "a service has either listen or fwmark, not both")
	case s.Listen == "" && s.Fwmark == 0:
		v.errf(p+".listen", "missing: the VIP:port clients connect to (or fwmark: the mark of a class)")
	case s.Listen != "":
		v.checkListen(p, s, listens)
	}
	if s.Scheduler != "" && !s.Scheduler.Valid() {
		v.errf(p+".scheduler", "%q is not one of %s", s.Scheduler, join(sched.Names))
	}
	if ps := s.Persistence; ps != nil {
		if ps.Timeout < 0 {
			v.errf(p+".persistence.timeout", "%s is negative", ps.Timeout.D())
		}
		if ps.Timeout.D() > affinity.MaxTimeout {
			v.errf(p+".persistence.timeout", "%s is longer than the %d days a template can wait", ps.Timeout.D(), affinity.MaxTimeout/(24*time.Hour))
		}
		if n := ps.MaxClientConnections; n < 0 || n > math.MaxUint32 {
			v.errf(p+".persistence.max_client_connections", "%d is not between 0 (no limit) and %d", n, uint32(math.MaxUint32))
		}
		if ps.Netmask != "" {
			if _, err := affinity.ParseMask4(ps.Netmask); err != nil {
				v.errf(p+".persistence.netmask", "%v", err)
			}
		}
		if ps.Netmask6 != "" {
			if _, err := affinity.ParseMask6(ps.Netmask6); err != nil {
				v.errf(p+".persistence.netmask6", "%v", err)
			}
		}
	}
	l := s.Limits
	for _, c := range []struct {
		key string
		neg bool
	}{
		{"max_connections", l.MaxConnections < 0},
		{"max_connections_per_server", l.MaxConnectionsPerServer < 0},
		{"connect_timeout", l.ConnectTimeout < 0},
		{"connect_attempts", l.ConnectAttempts < 0},
		{"idle_timeout", l.IdleTimeout < 0},
	} {
		if c.neg {
			v.errf(p+".limits."+c.key, "is negative")
		}
	}
	if len(s.Servers) == 0 {
		v.errf(p+".servers", "no servers")
	}
	seen := map[string]string{}
	for j, sv := range s.Servers {
		q := fmt.Sprintf("%s.servers[%d]", p, j)
		k, ok := v.checkServer(q+".address", sv.Address, s.Fwmark != 0)
		if ok {
			if other := seen[k]; other != "" {
				v.errf(q+".address", "server %s is listed twice (also %s)", k, other)
			}
			seen[k] = q
		}
		if sv.Weight != nil && (*sv.Weight < 0 || *sv.Weight > 65535) {
			v.errf(q+".weight", "%d is outside 0..65535", *sv.Weight)
		}
		if sv.MaxConnections < 0 {
			v.errf(q+".max_connections", "%d is negative", sv.MaxConnections)
		}
		switch r := sv.ResumeConnections; {
		case r < 0:
			v.errf(q+".resume_connections", "%d is negative", r)
		case r > 0 && sv.MaxConnections == 0:
			v.errf(q+".resume_connections", "needs max_connections: it is where a full server takes clients again")
		case r > sv.MaxConnections && sv.MaxConnections > 0:
			v.errf(q+".resume_connections", "%d is above max_connections %d", r, sv.MaxConnections)
		}
		hc, at := s.HealthCheck, p+".health_check"
		if sv.HealthCheck != nil {
			hc, at = sv.HealthCheck, q+".health_check"
			v.checkHealth(at, sv.HealthCheck)
		}
		if hc != nil && hc.Type != CheckExec && hc.Port == 0 {
			if _, err := netip.ParseAddrPort(sv.Address); err != nil && ok {
				v.errf(at+".port", "missing: server %s has no port, so a %s check needs one", sv.Address, hc.Type)
			}
		}
	}
	if s.HealthCheck != nil {
		v.checkHealth(p+".health_check", s.HealthCheck)
	}
	v.checkSorry(p, s)
}

// checkSorry validates the sorry server and the quorum.
func (v *validator) checkSorry(p string, s *Service) {
	if s.SorryServer != "" {
		if k, ok := v.checkServer(p+".sorry_server", s.SorryServer, s.Fwmark != 0); ok {
			for _, sv := range s.Servers {
				if a, err := netip.ParseAddrPort(sv.Address); err == nil && a.String() == k || sv.Address == k {
					v.errf(p+".sorry_server", "%s is also one of the service's servers", k)
				}
			}
		}
	}
	total := 0
	for _, sv := range s.Servers {
		if sv.Weight == nil {
			total++
		} else {
			total += *sv.Weight
		}
	}
	switch {
	case s.Quorum < 0:
		v.errf(p+".quorum", "%d is negative", s.Quorum)
	case s.Quorum > total && len(s.Servers) > 0:
		v.errf(p+".quorum", "%d is more than the servers' total weight %d: the service could never run", s.Quorum, total)
	case s.Quorum == 0 && len(s.QuorumUp)+len(s.QuorumDown) > 0:
		v.errf(p+".quorum_up", "quorum_up and quorum_down need a quorum: the service has none")
	}
	for key, argv := range map[string][]string{"quorum_up": s.QuorumUp, "quorum_down": s.QuorumDown} {
		if len(argv) > 0 && argv[0] == "" {
			v.errf(p+"."+key, "the command is empty")
		}
	}
}

// checkHealth validates one health check, including fields that do not
// belong to its type.
func (v *validator) checkHealth(p string, hc *HealthCheck) {
	if !contains(CheckTypes, hc.Type) {
		if hc.Type == "" {
			v.errf(p+".type", "missing: one of %s", join(CheckTypes))
		} else {
			v.errf(p+".type", "%q is not one of %s", hc.Type, join(CheckTypes))
		}
		return
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{{"interval", hc.Interval}, {"timeout", hc.Timeout}} {
		if d.v < 0 {
			v.errf(p+"."+d.key, "%s is negative", d.v.D())
		}
	}
	if hc.Interval > 0 && hc.Interval.D() < MinCheckInterval {
		v.errf(p+".interval", "%s is shorter than %s: checks that often would take a core", hc.Interval.D(), MinCheckInterval)
	}
	if hc.Rise < 0 {
		v.errf(p+".rise", "%d is negative", hc.Rise)
	}
	if hc.Fall < 0 {
		v.errf(p+".fall", "%d is negative", hc.Fall)
	}
	if hc.Start != "" && hc.Start != StartUp && hc.Start != StartDown {
		v.errf(p+".start", "%q is not up or down", hc.Start)
	}
	only := func(key string, typ CheckType, set bool) {
		if set && hc.Type != typ && !(typ == CheckHTTP && hc.Type == CheckHTTPS) {
			v.errf(p+"."+key, "is for %s checks, and this one is %s", typ, hc.Type)
		}
	}
	only("path", "http", hc.Path != "")
	only("host", "http", hc.Host != "")
	only("expect_status", "http", hc.ExpectStatus != "")
	only("expect_body", "http", hc.ExpectBody != "")
	only("digest", "http", hc.Digest != "")
	only("sni", "https", hc.SNI != "")
	only("verify_tls", "https", hc.VerifyTLS)
	only("helo", "smtp", hc.Helo != "")
	only("query_name", "dns", hc.QueryName != "")
	only("query_type", "dns", hc.QueryType != "")
	if t := hc.QueryType; t != "" {
		if _, ok := dns.StringToType[strings.ToUpper(t)]; !ok {
			v.errf(p+".query_type", "%q is not a DNS record type", t)
		}
	}
	if n := hc.QueryName; n != "" {
		if _, ok := dns.IsDomainName(n); !ok {
			v.errf(p+".query_name", "%q is not a domain name", n)
		}
	}
	if d := hc.Digest; d != "" {
		if _, err := hex.DecodeString(d); err != nil || len(d) != 32 {
			v.errf(p+".digest", "%q is not an MD5 digest (32 hex digits)", d)
		}
	}
	only("send", "udp", hc.Send != "")
	only("expect", "udp", hc.Expect != "")
	only("command", "exec", len(hc.Command) > 0)
	if hc.Type == CheckExec {
		if len(hc.Command) == 0 || hc.Command[0] == "" {
			v.errf(p+".command", "missing: the program to run and its arguments")
		}
		if hc.Port != 0 {
			v.errf(p+".port", "is for tcp, http and udp checks")
		}
	}
	if hc.Path != "" && !strings.HasPrefix(hc.Path, "/") {
		v.errf(p+".path", "%q does not start with /", hc.Path)
	}
	if hc.ExpectStatus != "" {
		if _, _, err := ParseStatusRange(hc.ExpectStatus); err != nil {
			v.errf(p+".expect_status", "%v", err)
		}
	}
}

// ParseStatusRange reads an HTTP status range: "200" or "200-399".
func ParseStatusRange(s string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	lo, err1 := strconv.Atoi(strings.TrimSpace(a))
	hi = lo
	var err2 error
	if isRange {
		hi, err2 = strconv.Atoi(strings.TrimSpace(b))
	}
	if err1 != nil || err2 != nil || lo < 100 || hi > 599 || lo > hi {
		return 0, 0, fmt.Errorf("%q is not a status code or range such as 200 or 200-399", s)
	}
	return lo, hi, nil
}

// parseNets reads client addresses and prefixes (198.51.100.7, 10.0.0.0/8,
// 2001:db8::/32); an address is its own /32 or /128.
func parseNets(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, netip.PrefixFrom(p.Addr().Unmap(), min(p.Bits(), p.Addr().Unmap().BitLen())).Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an address or a prefix such as 198.51.100.0/24", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// checkSendProxy validates a send_proxy setting at key.
func (v *validator) checkSendProxy(p string, s *Service, pp ProxyProtocol, key string) {
	switch {
	case pp == "":
	case pp != ProxyV1 && pp != ProxyV2:
		v.errf(key, "%q is not v1 or v2", pp)
	case s.Protocol == UDP:
		v.errf(key, "is for TCP services: a UDP flow has no stream to put a header in front of")
	case s.Mode == ModeDirector:
		v.errf(key, "is for the socket proxy: the director forwards in the kernel and never sees the bytes")
	}
}
