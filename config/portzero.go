package config

import (
	"net/netip"
	"slices"
	"strconv"
)

// portZeroToMarks turns each persistent port-0 service (listen: VIP:0,
// every port of the VIP, as ipvsadm's) into a firewall-mark service over a
// class of the VIP's ports, since only the transparent data path can take
// every port. As in IPVS, a service on a specific port of the same VIP
// wins: its port is left out of the class. The mark is taken from the top
// of the mark mask down, skipping marks in use, so the same file always
// gives the same marks (templates are keyed by them).
func portZeroToMarks(f *File) {
	used := map[uint32]bool{}
	for _, m := range f.Marks {
		used[m.Mark] = true
	}
	mask := f.MarkMask
	if mask == 0 {
		mask = ^uint32(0)
	}
	low := mask & -mask
	next := mask
	for i := range f.Services {
		s := &f.Services[i]
		ap, err := netip.ParseAddrPort(s.Listen)
		if err != nil || ap.Port() != 0 || s.Persistence == nil {
			continue
		}
		vip := ap.Addr().Unmap()
		proto := s.Protocol
		if proto == "" {
			proto = TCP
		}
		var taken []int // ports of the same VIP and protocol that a service has
		for _, o := range f.Services {
			op := o.Protocol
			if op == "" {
				op = TCP
			}
			if oap, err := netip.ParseAddrPort(o.Listen); err == nil && oap.Addr().Unmap() == vip && oap.Port() != 0 && op == proto {
				taken = append(taken, int(oap.Port()))
			}
		}
		for used[next] && next != 0 {
			next -= low
		}
		f.Marks = append(f.Marks, MarkClass{
			Name: "port0-" + s.Name, Mark: next, Protocol: string(proto),
			Addresses: []string{vip.String()}, Ports: portsExcept(taken),
		})
		used[next] = true
		// A mark service takes its protocol from its class.
		s.Fwmark, s.Listen, s.Protocol = next, "", ""
	}
}

// portsExcept is every port 1..65535 but the given ones, as ranges.
func portsExcept(taken []int) []string {
	slices.Sort(taken)
	var out []string
	from := 1
	for _, p := range taken {
		if p > from {
			out = append(out, rangeString(from, p-1))
		}
		from = max(from, p+1)
	}
	if from <= 65535 {
		out = append(out, rangeString(from, 65535))
	}
	return out
}

func rangeString(a, b int) string {
	if a == b {
		return strconv.Itoa(a)
	}
	return strconv.Itoa(a) + "-" + strconv.Itoa(b)
}
