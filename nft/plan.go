package nft

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/tetherlb/tether/affinity"

	"github.com/google/nftables"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/marks"
	"golang.org/x/sys/unix"
)

// ChoiceKey names a server of a director service; its mark is the verdict
// that sends a flow there.
type ChoiceKey struct {
	Service config.ServiceKey
	Server  netip.AddrPort
}

// Families are the director's table families, in the order they are
// applied.
var Families = []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6}

// Choices are the choices of cfg's director services, in config order.
func Choices(cfg *config.File) []ChoiceKey {
	var want []ChoiceKey
	for _, sc := range cfg.Services {
		if cfg.ServiceMode(sc) != config.ModeDirector {
			continue
		}
		for _, s := range sc.Servers {
			want = append(want, ChoiceKey{sc.Key(), s.Addr})
		}
		if sc.SorryServer != "" {
			want = append(want, ChoiceKey{sc.Key(), sc.Sorry})
		}
	}
	return want
}

// ByMark is assigned inverted: the choice each mark names.
func ByMark(assigned map[ChoiceKey]uint32) map[uint32]ChoiceKey {
	out := make(map[uint32]ChoiceKey, len(assigned))
	for k, m := range assigned {
		out[m] = k
	}
	return out
}

// AssignMarks gives each wanted choice a mark: the one it had, else the
// lowest free one from base, so that marks stay put across reloads and stay
// within base..base+len(want)-1.
func AssignMarks(old map[ChoiceKey]uint32, want []ChoiceKey, base uint32) map[ChoiceKey]uint32 {
	out := make(map[ChoiceKey]uint32, len(want))
	used := map[uint32]bool{}
	for _, k := range want {
		if m, ok := old[k]; ok && m-base < uint32(len(want)) {
			out[k], used[m] = m, true
		}
	}
	next := base
	for _, k := range want {
		if _, ok := out[k]; ok {
			continue
		}
		for used[next] {
			next++
		}
		out[k], used[next] = next, true
	}
	return out
}

// DirectorTables renders cfg's director services into one table per
// family, with the given choice marks. weights, when not nil, replaces the
// configured weights of the fail-open fallback (the servers' weights in
// force, 0 while down).
func DirectorTables(cfg *config.File, assigned map[ChoiceKey]uint32, q Queue, weights map[ChoiceKey]int) map[nftables.TableFamily]*Director {
	set := cfg.MarkSet
	tables := map[nftables.TableFamily]*Director{}
	for _, fam := range Families {
		tables[fam] = &Director{Family: fam, MarkMask: set.MarkMask(), Masquerade: cfg.Director.Masquerade, Queue: q}
	}
	for _, sc := range cfg.Services {
		if cfg.ServiceMode(sc) != config.ModeDirector {
			continue
		}
		k := sc.Key()
		for _, fam := range Families {
			is4 := fam == nftables.TableFamilyIPv4
			ds := DirectorService{Mark: sc.Fwmark, Proto: unix.IPPROTO_TCP}
			if sc.Fwmark == 0 {
				if k.VIP.Addr().Is4() != is4 {
					continue
				}
				ds.VIP = k.VIP
				if k.UDP {
					ds.Proto = unix.IPPROTO_UDP
				}
				ds.FTP = !k.UDP && k.VIP.Port() == 21
			} else if c, ok := set.ByMark(sc.Fwmark); ok {
				ds.FTP = c.Protocols&marks.TCP != 0 && slices.ContainsFunc(c.Ports, func(r marks.PortRange) bool { return r.From <= 21 && 21 <= r.To })
			}
			ds.FallbackBits = 32
			if !is4 {
				ds.FallbackBits = 128
			}
			if ps := sc.Persistence; ps != nil {
				ds.FallbackBits = ps.Mask.Bits4()
				if !is4 {
					ds.FallbackBits = ps.Mask.Bits6()
				}
			}
			for _, s := range sc.Servers {
				if s.Addr.Addr().Is4() != is4 {
					continue
				}
				w := *s.Weight
				if weights != nil {
					w = weights[ChoiceKey{k, s.Addr}]
				}
				ds.Choices = append(ds.Choices, Choice{Mark: assigned[ChoiceKey{k, s.Addr}], Server: s.Addr, Weight: w})
			}
			if sc.SorryServer != "" && sc.Sorry.Addr().Is4() == is4 {
				// Weight 0 unless no server has any: the fail-open
				// fallback picks it only then.
				ds.Choices = append(ds.Choices, Choice{Mark: assigned[ChoiceKey{k, sc.Sorry}], Server: sc.Sorry, Weight: weights[ChoiceKey{k, sc.Sorry}]})
			}
			ds.Allow, ds.Deny = sc.AllowNets, sc.DenyNets
			if cfg.KernelTemplates(sc) {
				// The table's bound bounds the map (the table evicts first).
				ds.Template = TemplateID(sc)
				ds.Templates = uint32(cfg.Affinity.Capacity)
				if ds.Templates == 0 {
					ds.Templates = affinity.DefaultCapacity
				}
			}
			if len(ds.Choices) > 0 {
				tables[fam].Services = append(tables[fam].Services, ds)
			}
		}
	}
	return tables
}

// QueueOf is the queue statement the director tables of cfg use; native
// says the kernel has nft's own queue statement.
func QueueOf(d config.Director, native bool) Queue {
	return Queue{Num: d.Queue, Total: d.Queues, CPUFanout: d.CPUFanout, Bypass: d.FailOpen, Native: native}
}

// ShowDirector renders the director tables cfg makes, in nft syntax, with
// the marks a fresh start assigns; empty without director services.
func ShowDirector(cfg *config.File) string {
	if !cfg.HasDirector() {
		return ""
	}
	tables := DirectorTables(cfg, AssignMarks(nil, Choices(cfg), cfg.Director.MarkBase), QueueOf(cfg.Director, false), nil)
	var out []string
	for _, fam := range Families {
		if len(tables[fam].Services) > 0 {
			out = append(out, tables[fam].Show())
		}
	}
	return strings.Join(out, "\n")
}

// DirectorMarks are the marks of the director's firewall-mark services:
// their classes are marked but not TPROXYed.
func DirectorMarks(cfg *config.File) []uint32 {
	var out []uint32
	for _, s := range cfg.Services {
		if s.Fwmark != 0 && cfg.ServiceMode(s) == config.ModeDirector {
			out = append(out, s.Fwmark)
		}
	}
	return out
}

// TemplateID is a service's identity in the persistence table. A mark
// service's templates are keyed by the mark alone, so they span every
// port and protocol the mark covers.
func TemplateID(sc config.Service) affinity.Service {
	if sc.Fwmark != 0 {
		return affinity.MarkService(sc.Fwmark)
	}
	proto := affinity.ProtoTCP
	if sc.Protocol == config.UDP {
		proto = affinity.ProtoUDP
	}
	return affinity.AddrService(proto, sc.VIP)
}
