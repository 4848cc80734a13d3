package nft

import (
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// What differs between IPv4 and IPv6 in tether's rules, in one place.

func is6(fam nftables.TableFamily) bool { return fam == nftables.TableFamilyIPv6 }

// addrType is the set type of an address of fam.
func addrType(fam nftables.TableFamily) nftables.SetDatatype {
	if is6(fam) {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

// addrTypeName is addrType as nft prints it.
func addrTypeName(fam nftables.TableFamily) string {
	if is6(fam) {
		return "ipv6_addr"
	}
	return "ipv4_addr"
}

// nfproto is fam's NFPROTO_ number (meta nfproto, NAT, helpers).
func nfproto(fam nftables.TableFamily) uint32 {
	if is6(fam) {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

// famName is fam as nft names it in a rule or a table: ip, ip6.
func famName(fam nftables.TableFamily) string {
	if is6(fam) {
		return "ip6"
	}
	return "ip"
}

// saddrAt is the source address's offset and length in fam's header.
func saddrAt(fam nftables.TableFamily) (uint32, uint32) {
	if is6(fam) {
		return 8, 16
	}
	return 12, 4
}

// ofFamily are the prefixes of ps in fam.
func ofFamily(ps []netip.Prefix, fam nftables.TableFamily) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is4() != is6(fam) {
			out = append(out, p)
		}
	}
	return out
}

// showAddrSet renders an interval set of fam's addresses (elements left
// out when there are none).
func showAddrSet(b *strings.Builder, name string, fam nftables.TableFamily, ps []netip.Prefix) {
	b.WriteString("\tset " + name + " {\n\t\ttype " + addrTypeName(fam) + "\n\t\tflags interval")
	if len(ps) > 0 {
		b.WriteString("\n\t\telements = { " + strings.Join(prefixes(ps), ", ") + " }")
	}
	b.WriteString("\n\t}\n\n")
}
