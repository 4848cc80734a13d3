package migrate

import (
	"net/netip"
	"strconv"
	"strings"
)

// maxGroupMembers bounds the services one virtual_server group becomes:
// an address range of a /16's worth would be a typo, not a plan.
const maxGroupMembers = 256

// groups reads the virtual_server_group blocks: name to members, each a
// virtual_server's arguments ("IP PORT" or "fwmark N"), address ranges
// ("198.18.0.1-10 80") spelt out.
func (r *Result) groups(blocks []*block) map[string][]*block {
	g := map[string][]*block{}
	for _, b := range blocks {
		if b.name() != "virtual_server_group" {
			continue
		}
		name := b.arg(1)
		if name == "" {
			r.unreadable(b.line, "virtual_server_group without a name; block left out")
			continue
		}
		var members []*block
		for _, k := range b.kids {
			if strings.EqualFold(k.words[0], "fwmark") {
				members = append(members, &block{line: k.line, words: []string{"virtual_server", "fwmark", k.arg(1)}})
				continue
			}
			addrs, ok := addrRange(k.words[0])
			if !ok {
				r.unreadable(k.line, "virtual_server_group %s: %q is not an address or a range of at most %d (A.B.C.D-E); member left out", name, k.words[0], maxGroupMembers)
				continue
			}
			for _, a := range addrs {
				members = append(members, &block{line: k.line, words: []string{"virtual_server", a, k.arg(1)}})
			}
		}
		if len(members) > maxGroupMembers {
			r.unreadable(b.line, "virtual_server_group %s: %d members, more than %d; left out", name, len(members), maxGroupMembers)
			continue
		}
		g[name] = members
	}
	return g
}

// addrRange spells out keepalived's address range: the last byte of an
// IPv4 address or the last 16 bits of an IPv6 one run to the number after
// the dash (hex for IPv6), as keepalived reads it. A plain address is a
// range of one.
func addrRange(s string) ([]string, bool) {
	first, last, isRange := strings.Cut(s, "-")
	a, err := netip.ParseAddr(first)
	if err != nil {
		return nil, false
	}
	if !isRange {
		return []string{a.String()}, true
	}
	b := a.As16()
	base := 10
	if a.Is6() && !a.Is4In6() {
		base = 16
	}
	end, err := strconv.ParseUint(last, base, 16)
	lo := uint64(b[15])
	if base == 16 {
		lo = uint64(b[14])<<8 | uint64(b[15])
	}
	if err != nil || end < lo || base == 10 && end > 255 || end-lo >= maxGroupMembers {
		return nil, false
	}
	var out []string
	for v := lo; v <= end; v++ {
		if base == 16 {
			b[14] = byte(v >> 8)
		}
		b[15] = byte(v)
		out = append(out, netip.AddrFrom16(b).Unmap().String())
	}
	return out, true
}

// groupServices converts a "virtual_server group NAME" block: one tether
// service per member with the block's settings, as keepalived makes one
// IPVS service per member (so persistence, too, is per member).
func (r *Result) groupServices(b *block, groups map[string][]*block) {
	name := b.arg(2)
	members, ok := groups[name]
	if !ok {
		r.unreadable(b.line, "virtual_server group %s: no virtual_server_group of that name; block left out", name)
		return
	}
	r.note(b.line, "virtual_server group %s: %d services, one per member, as keepalived makes them", name, len(members))
	for _, m := range members {
		vs := &block{line: b.line, words: m.words, kids: b.kids}
		if s, ok := r.virtualServer(vs); ok {
			r.Config.Services = append(r.Config.Services, s)
			r.lines = append(r.lines, b.line)
		}
	}
}
