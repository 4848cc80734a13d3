package config

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/tetherlb/tether/marks"
	"go.yaml.in/yaml/v3"
)

// intKeys are the keys of integer fields, where a fractional number is an
// error rather than something to truncate.
var intKeys = map[string]bool{
	"weight": true, "quorum": true, "capacity": true, "max_connections": true, "max_connections_per_server": true,
	"connect_attempts": true, "max_flows": true, "udp_max_flows": true, "rise": true, "fall": true, "port": true,
	"mark": true, "fwmark": true, "tproxy_port": true, "queue": true, "queues": true, "queue_length": true,
	"mark_base": true, "mark_mask": true, "tproxy_route_table": true, "tproxy_rule_priority": true,
}

// validator collects every problem with its line.
type validator struct {
	file  string
	lines map[string]int // key path -> line
	errs  Errors
}

// index records the line of every key path in the document.
func (v *validator) index(n *yaml.Node, path string) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			v.index(c, path)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := n.Content[i].Value
			if path != "" {
				p = path + "." + p
			}
			v.lines[p] = n.Content[i].Line
			if val := n.Content[i+1]; val.Kind == yaml.ScalarNode && val.ShortTag() == "!!float" && intKeys[n.Content[i].Value] {
				// yaml.v3 would truncate it into the int field: 1.9 -> 1.
				v.errf(p, "%s is not a whole number", val.Value)
			}
			v.index(n.Content[i+1], p)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			v.lines[p] = c.Line
			v.index(c, p)
		}
	}
}

func (v *validator) errf(key, format string, a ...any) {
	line := v.lines[key]
	for k := key; line == 0 && k != ""; {
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
		line = v.lines[k]
	}
	var cause error
	for _, x := range a {
		if e, ok := x.(error); ok {
			cause = e
		}
	}
	v.errs = append(v.errs, &Error{File: v.file, Line: line, Key: key, Msg: fmt.Sprintf(format, a...), Err: cause})
}

func (v *validator) check(f *File) {
	if f.Log.Level != "" {
		switch f.Log.Level {
		case "debug", "info", "warn", "error":
		default:
			v.errf("log.level", "%q is not debug, info, warn or error", f.Log.Level)
		}
	}
	if s := f.AccessLog.Sample; s < 0 || s > 1 {
		v.errf("access_log.sample", "%v is not a fraction in (0, 1]", s)
	}
	if f.Log.Format != "" && f.Log.Format != "text" && f.Log.Format != "json" {
		v.errf("log.format", "%q is not text or json", f.Log.Format)
	}
	if f.Metrics.Listen != "" {
		if _, err := netip.ParseAddrPort(f.Metrics.Listen); err != nil {
			v.errf("metrics.listen", "%q is not an address:port (%v)", f.Metrics.Listen, err)
		}
	}
	if a := f.Admin; a.Listen != "" {
		if _, err := netip.ParseAddrPort(a.Listen); err != nil {
			v.errf("admin.listen", "%q is not an address:port (%v)", a.Listen, err)
		}
		if a.TokenFile == "" {
			v.errf("admin.listen", "needs admin.token_file: the TCP API takes a bearer token")
		}
	}
	if f.Admin.Socket != "" && f.Admin.Socket != "off" && !strings.HasPrefix(f.Admin.Socket, "/") {
		v.errf("admin.socket", "%q is not an absolute path (or off)", f.Admin.Socket)
	}
	if f.Affinity.Capacity < 0 {
		v.errf("affinity.capacity", "%d is negative", f.Affinity.Capacity)
	}
	if f.DrainTimeout < 0 {
		v.errf("drain_timeout", "%s is negative", f.DrainTimeout.D())
	}
	if d := f.SnapshotInterval.D(); d != 0 && d < MinSnapshotInterval {
		v.errf("snapshot_interval", "%s is shorter than %s", d, MinSnapshotInterval)
	}
	switch t := f.TProxyRouteTable; {
	case t < 0 || t > 0 && t >= 253 && t <= 255:
		v.errf("tproxy_route_table", "%d is not a free routing table (253 default, 254 main and 255 local are the kernel's)", t)
	}
	if f.TProxy != "" && f.TProxy != TProxyAuto && f.TProxy != TProxyAlways {
		v.errf("tproxy", "%q is not auto or always", f.TProxy)
	}
	if f.UDPMaxFlows < 0 {
		v.errf("udp_max_flows", "%d is negative", f.UDPMaxFlows)
	}
	if f.TProxyRulePriority < 0 || f.TProxyRulePriority > 32765 {
		v.errf("tproxy_rule_priority", "%d is outside 1..32765 (main is at 32766)", f.TProxyRulePriority)
	}
	v.checkDirector(f)
	v.checkCluster(f.Cluster)
	if len(v.errs) == 0 {
		portZeroToMarks(f)
	}
	set := v.checkMarks(f)
	f.MarkSet = set // parsed once; used only when the file is valid
	if len(f.Services) == 0 {
		v.errf("services", "no services: nothing to balance")
	}
	names := map[string]string{}
	listens := map[string]string{}
	fwmarks := map[uint32]string{}
	for i := range f.Services {
		p := fmt.Sprintf("services[%d]", i)
		v.checkService(p, &f.Services[i], names, listens)
		if m := f.Services[i].Fwmark; m != 0 {
			if _, ok := set.ByMark(m); !ok {
				v.errf(p+".fwmark", "no class in marks has mark %d", m)
			}
			if other := fwmarks[m]; other != "" {
				v.errf(p+".fwmark", "mark %d is already the service of %s", m, other)
			}
			fwmarks[m] = p
		}
	}
	v.checkChoiceMarks(f, set)
}

func (v *validator) checkDirector(f *File) {
	if f.Mode != "" && !contains(Modes, f.Mode) {
		v.errf("mode", "%q is not proxy or director", f.Mode)
	}
	d := f.Director
	if d.ExpireNodest != "" && d.ExpireNodest != ExpireKeep && d.ExpireNodest != ExpireReset {
		v.errf("director.expire_nodest", "%q is not keep or reset", d.ExpireNodest)
	}
	if int(d.Queue)+int(max(d.Queues, 1)) > 65536 {
		v.errf("director.queues", "queues %d..%d go past 65535", d.Queue, int(d.Queue)+int(d.Queues)-1)
	}
}

// checkChoiceMarks: the marks that name director servers must not be
// class marks, or a class's flows would be taken for server choices.
func (v *validator) checkChoiceMarks(f *File, set marks.Set) {
	base := f.Director.MarkBase
	if base == 0 {
		base = DefaultMarkBase
	}
	n := uint32(0)
	for _, s := range f.Services {
		if s.Mode == ModeDirector || s.Mode == "" && f.Mode == ModeDirector {
			n += uint32(len(s.Servers))
			if s.SorryServer != "" {
				n++
			}
		}
	}
	if n == 0 {
		return
	}
	if base+n < base {
		v.errf("director.mark_base", "%#x + %d server choices passes 0xffffffff", base, n)
		return
	}
	for i, c := range set.Classes {
		if c.Mark >= base && c.Mark < base+n {
			v.errf(fmt.Sprintf("marks[%d].mark", i), "%#x is one of the director's server-choice marks %#x..%#x (director.mark_base)", c.Mark, base, base+n-1)
		}
	}
}

// checkMarks parses the mark classes and validates them as a set.
func (v *validator) checkMarks(f *File) marks.Set {
	set := marks.Set{Mask: f.MarkMask}
	for i, mc := range f.Marks {
		p := fmt.Sprintf("marks[%d]", i)
		c := marks.Class{Name: mc.Name, Mark: mc.Mark}
		var err error
		if c.Protocols, err = marks.ParseProtocols(mc.Protocol); err != nil {
			v.errf(p+".protocol", "%v", err)
		}
		if c.Addrs, err = marks.ParseAddrs(mc.Addresses); err != nil {
			v.errf(p+".addresses", "%v", err)
		}
		if c.Ports, err = marks.ParsePorts(mc.Ports); err != nil {
			v.errf(p+".ports", "%v", err)
		}
		set.Classes = append(set.Classes, c)
	}
	for _, err := range set.Validate() {
		i := err.(*marks.Error).Index
		v.errf(fmt.Sprintf("marks[%d]", i), "%v", err)
	}
	return set
}

func (v *validator) checkListen(p string, s *Service, listens map[string]string) {
	ap, err := netip.ParseAddrPort(s.Listen)
	if err != nil {
		v.errf(p+".listen", "%q is not an address:port such as 198.18.0.10:80 or [2001:db8::1]:443", s.Listen)
		return
	}
	proto := s.Protocol
	if proto == "" {
		proto = TCP
	}
	k := string(proto) + " " + ap.String()
	if ap.Port() == 0 && s.Persistence == nil {
		v.errf(p+".listen", "port 0 (every port of the VIP) needs persistence, as in ipvsadm")
	}
	if other := listens[k]; other != "" {
		v.errf(p+".listen", "%s is already the listen address of %s", k, other)
	}
	listens[k] = p
}

// checkServer validates a real server's address and returns its normal
// form. A mark service's server may omit the port: the client's original
// destination port is kept (IPVS's rule for mark services).
func (v *validator) checkServer(q, addr string, portOptional bool) (string, bool) {
	if addr == "" {
		v.errf(q, "missing")
		return "", false
	}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		if ap.Port() == 0 {
			v.errf(q, "%q has port 0; give the server's port%s", addr, map[bool]string{true: " or none", false: ""}[portOptional])
			return "", false
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String(), true
	}
	if a, err := netip.ParseAddr(addr); err == nil && portOptional {
		return a.Unmap().String(), true
	}
	if portOptional {
		v.errf(q, "%q is not an address or address:port", addr)
	} else {
		v.errf(q, "%q is not an address:port", addr)
	}
	return "", false
}

func family(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func contains[T comparable](list []T, s T) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
