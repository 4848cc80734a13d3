package nft

import (
	"net/netip"

	"github.com/tetherlb/tether/config"
)

// ListenedClasses are the classes tether listens for instead of TPROXYing
// their TCP flows (config tproxy: auto), with the (address, port)s to bind:
// the classes of socket-proxy mark services whose addresses are all
// single and local (local) and at most config.MaxListenPairs pairs, none
// of which a `listen:` service of cfg claims. A listener on a local
// address gets what TPROXY would have sent it without the kernel's
// per-packet tproxy lookup, its socket redirect and policy routing (README,
// Firewall-mark services); a class with a prefix, a port range or an
// address that is only routed here needs TPROXY.
func ListenedClasses(cfg *config.File, local func(netip.Addr) bool) map[uint32][]netip.AddrPort {
	if cfg.TProxy == config.TProxyAlways {
		return nil
	}
	listens := map[netip.AddrPort]bool{}
	for _, s := range cfg.Services {
		if k := s.Key(); s.Fwmark == 0 && !k.UDP && k.VIP.IsValid() {
			listens[k.VIP] = true
		}
	}
	claimed := func(ap netip.AddrPort) bool {
		unspec := netip.IPv4Unspecified()
		if ap.Addr().Is6() {
			unspec = netip.IPv6Unspecified()
		}
		return listens[ap] || listens[netip.AddrPortFrom(unspec, ap.Port())]
	}
	out := map[uint32][]netip.AddrPort{}
	for _, s := range cfg.Services {
		if s.Fwmark == 0 || cfg.ServiceMode(s) == config.ModeDirector {
			continue
		}
		cl, ok := cfg.MarkSet.ByMark(s.Fwmark)
		if !ok {
			continue
		}
		pairs, ok := cl.ListenPairs(config.MaxListenPairs)
		for _, ap := range pairs {
			ok = ok && local(ap.Addr()) && !claimed(ap)
		}
		if ok {
			out[cl.Mark] = pairs
		}
	}
	return out
}
