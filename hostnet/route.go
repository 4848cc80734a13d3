package hostnet

import (
	"errors"
	"fmt"
	"net"

	"github.com/tetherlb/tether/marks"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Routing is the policy routing TPROXY needs for a VIP that is not a local
// address: packets of a marked flow that enter through an ingress
// interface are looked up in Table, where everything is local. The rule
// names its ingress on purpose: a bare fwmark rule would also catch the
// SYN-ACK tether sends, loop it back to lo, and leave the connection in
// SYN-RECV.
type Routing struct {
	Ingress []string // interfaces clients come in through
	// Table is the routing table for marked flows and Priority the
	// rules' priority; both are needed with Ingress (config fills in
	// its defaults, 100 and 1000).
	Table    int
	Priority int
}

func (r Routing) check() error {
	if r.Table <= 0 || r.Priority <= 0 {
		return fmt.Errorf("policy routing: table %d and priority %d: both must be set", r.Table, r.Priority)
	}
	return nil
}

// Apply makes tether's rules (those at its priority, for its table) one
// per class mark and ingress, and puts the local default routes in the
// table. It adds the missing rules before it deletes the ones no longer
// wanted, and leaves the rest alone, so that a reload leaves no moment
// without them. It runs in the calling thread's network namespace.
func (r Routing) Apply(set marks.Set) error {
	if len(r.Ingress) == 0 {
		return nil // no policy routing configured: touch nobody's rules
	}
	if err := r.check(); err != nil {
		return err
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("policy routing: %w", err)
	}
	mask := set.MarkMask()
	type ruleKey struct {
		family int
		iif    string
		mark   uint32
	}
	for _, fam := range []struct {
		family int
		dst    *net.IPNet
	}{{unix.AF_INET, &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}, {unix.AF_INET6, &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}}} {
		err := h.RouteReplace(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: fam.dst, Table: r.Table, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, Family: fam.family})
		if err != nil {
			return fmt.Errorf("policy routing: local route in table %d: %w", r.Table, err)
		}
		have := map[ruleKey]netlink.Rule{}
		var stale []netlink.Rule // another mask: goes after the new ones are in
		rules, err := h.RuleList(fam.family)
		if err != nil {
			return err
		}
		for _, rule := range rules {
			if rule.Table == r.Table && rule.Priority == r.Priority {
				m := uint32(0)
				if rule.Mask != nil {
					m = *rule.Mask
				}
				if m == mask {
					have[ruleKey{fam.family, rule.IifName, rule.Mark}] = rule
					continue
				}
				stale = append(stale, rule)
			}
		}
		want := map[ruleKey]bool{}
		for _, c := range set.Classes {
			for _, in := range r.Ingress {
				k := ruleKey{fam.family, in, c.Mark}
				want[k] = true
				if _, ok := have[k]; ok {
					continue
				}
				rule := netlink.NewRule()
				rule.Family, rule.IifName, rule.Table, rule.Priority = fam.family, in, r.Table, r.Priority
				rule.Mark, rule.Mask = c.Mark, &mask
				if err := h.RuleAdd(rule); err != nil {
					return fmt.Errorf("policy routing: ip rule iif %s fwmark %#x lookup %d: %w", in, c.Mark, r.Table, err)
				}
			}
		}
		for k, rule := range have {
			if !want[k] {
				stale = append(stale, rule)
			}
		}
		for _, rule := range stale {
			if err := h.RuleDel(&rule); err != nil {
				return fmt.Errorf("policy routing: removing ip rule iif %s fwmark %#x: %w", rule.IifName, rule.Mark, err)
			}
		}
	}
	return nil
}

// Remove deletes tether's rules (at its priority, for its table) and the
// table's routes, including the ones a killed tether left: rules are not
// owned by a socket, as the nftables table is. Without Ingress it touches
// nothing.
func (r Routing) Remove() error {
	if len(r.Ingress) == 0 {
		return nil // tether made none; the table may be someone else's
	}
	if err := r.check(); err != nil {
		return err
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := h.RuleList(family)
		if err != nil {
			return err
		}
		for _, rule := range rules {
			if rule.Table == r.Table && rule.Priority == r.Priority {
				rule := rule
				if err := h.RuleDel(&rule); err != nil {
					errs = append(errs, err)
				}
			}
		}
		routes, err := h.RouteListFiltered(family, &netlink.Route{Table: r.Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		for _, rt := range routes {
			rt := rt
			if err := h.RouteDel(&rt); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
