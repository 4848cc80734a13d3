package nft

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Show renders the director table in nft syntax (the queue as nft's queue
// statement, whichever the kernel takes).
func (d Director) Show() string {
	var b strings.Builder
	fam := famName(d.Family)
	addr := fam
	var choices, withPort, noPort []string
	for _, s := range d.Services {
		for _, ch := range s.Choices {
			choices = append(choices, fmt.Sprintf("%#08x", ch.Mark))
			if ch.Server.Port() == 0 {
				noPort = append(noPort, fmt.Sprintf("%#08x : %s", ch.Mark, ch.Server.Addr()))
			} else {
				withPort = append(withPort, fmt.Sprintf("%#08x : %s . %d", ch.Mark, ch.Server.Addr(), ch.Server.Port()))
			}
		}
	}
	typ := addrTypeName(d.Family)
	fmt.Fprintf(&b, "table %s %s {\n", fam, d.tableName())
	if d.hasFTP() {
		fmt.Fprintf(&b, "\tct helper %s {\n\t\ttype \"ftp\" protocol tcp\n\t\tl3proto %s\n\t}\n\n", helperFTP, fam)
	}
	elems := func(es []string) string {
		if len(es) == 0 {
			return ""
		}
		return "\n\t\telements = { " + strings.Join(es, ", ") + " }"
	}
	fmt.Fprintf(&b, "\tset choices {\n\t\ttype mark%s\n\t}\n\n", elems(choices))
	fmt.Fprintf(&b, "\tmap dnat_port {\n\t\ttype mark : %s . inet_service%s\n\t}\n\n", typ, elems(withPort))
	fmt.Fprintf(&b, "\tmap dnat_addr {\n\t\ttype mark : %s%s\n\t}\n\n", typ, elems(noPort))
	for i, s := range d.Services {
		d.showACLSets(&b, i)
		if s.Templates > 0 {
			fmt.Fprintf(&b, "\tmap %s {\n\t\ttype %s : mark\n\t\tsize %d\n\t\tflags timeout\n\t}\n\n", templateSetName(i), typ, s.Templates)
		}
	}
	if d.Queue.Bypass {
		for i, s := range d.Services {
			servers := fallbackServers(s)
			if len(servers) == 0 {
				continue
			}
			var es []string
			vt := typ
			for j, a := range servers {
				if a.Port() == 0 {
					es = append(es, fmt.Sprintf("%d : %s", j, a.Addr()))
				} else {
					vt = typ + " . inet_service"
					es = append(es, fmt.Sprintf("%d : %s . %d", j, a.Addr(), a.Port()))
				}
			}
			fmt.Fprintf(&b, "\tmap fallback%d {\n\t\ttype mark : %s%s\n\t}\n\n", i, vt, elems(es))
		}
	}
	q := d.Queue
	queue := fmt.Sprintf("queue num %d", q.Num)
	if total := max(q.Total, 1); total > 1 {
		queue = fmt.Sprintf("queue num %d-%d", q.Num, q.Num+total-1)
	}
	var qflags []string
	if q.Bypass {
		qflags = append(qflags, "bypass")
	}
	if q.CPUFanout && q.Total > 1 {
		qflags = append(qflags, "fanout")
	}
	if len(qflags) > 0 {
		queue += " " + strings.Join(qflags, ",")
	}
	fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook prerouting priority mangle + 10; policy accept;\n", chainSteer)
	b.WriteString("\t\tct mark @choices meta mark set ct mark\n")
	match := func(s DirectorService) string {
		if s.Mark != 0 {
			if d.MarkMask != ^uint32(0) && d.MarkMask != 0 {
				return fmt.Sprintf("ct state new meta mark & %#08x == %#08x", d.MarkMask, s.Mark)
			}
			return fmt.Sprintf("ct state new meta mark %#08x", s.Mark)
		}
		return fmt.Sprintf("ct state new %s daddr %s %s dport %d", addr, s.VIP.Addr(), protoName(s.Proto), s.VIP.Port())
	}
	for i, s := range d.Services {
		d.showACL(&b, match(s), addr, i)
		if s.FTP {
			fmt.Fprintf(&b, "\t\t%s tcp dport 21 ct helper set %q\n", match(s), helperFTP)
		}
		if s.Templates > 0 {
			fmt.Fprintf(&b, "\t\t%s meta mark != @choices meta mark set %s saddr & %s map @%s\n",
				match(s), addr, netmask(d.Family, s.FallbackBits), templateSetName(i))
		}
		fmt.Fprintf(&b, "\t\t%s meta mark != @choices %s\n", match(s), queue)
	}
	b.WriteString("\t}\n\n")
	fmt.Fprintf(&b, "\tchain %s {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n", chainRewrite)
	b.WriteString("\t\tmeta mark @choices ct mark set meta mark\n")
	b.WriteString("\t\tmeta l4proto tcp dnat " + addr + " to meta mark map @dnat_port\n")
	b.WriteString("\t\tmeta l4proto udp dnat " + addr + " to meta mark map @dnat_port\n")
	b.WriteString("\t\tdnat " + addr + " to meta mark map @dnat_addr\n")
	if q.Bypass {
		for i, s := range d.Services {
			if servers := fallbackServers(s); len(servers) > 0 {
				fmt.Fprintf(&b, "\t\t%s meta mark != @choices dnat %s to jhash %s saddr & %s mod %d map @fallback%d\n",
					match(s), addr, addr, netmask(d.Family, s.FallbackBits), len(servers), i)
			}
		}
	}
	b.WriteString("\t}\n")
	if d.Masquerade {
		fmt.Fprintf(&b, "\n\tchain %s {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tct mark @choices masquerade\n\t}\n", chainOneArm)
	}
	b.WriteString("}\n")
	return b.String()
}

// netmask is a prefix length as the address mask nft prints.
func netmask(fam nftables.TableFamily, bits int) netip.Addr {
	n := 4
	if fam == nftables.TableFamilyIPv6 {
		n = 16
	}
	b := make([]byte, n)
	for i := 0; i < bits && i < n*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func protoName(p byte) string {
	if p == unix.IPPROTO_UDP {
		return "udp"
	}
	return "tcp"
}
