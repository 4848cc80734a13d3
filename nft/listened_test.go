package nft

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/tetherlb/tether/config"
)

// Which classes tether listens for: only a socket-proxy mark service's
// class of few local single addresses whose pairs no `listen:` service
// claims, and none with tproxy: always.
func TestListenedClasses(t *testing.T) {
	const classes = `marks:
  - {name: web, mark: 1, addresses: [198.18.0.10, "2001:2::10"], ports: [80, 443]}
  - {name: ftp, mark: 2, addresses: [198.18.0.10], ports: [21, 30000-30099]}
  - {name: routed, mark: 3, addresses: [198.18.0.99], ports: [80]}
  - {name: net, mark: 4, addresses: [198.18.0.0/24], ports: [8080]}
  - {name: dir, mark: 5, addresses: [198.18.0.10], ports: [25]}
  - {name: held, mark: 6, addresses: [198.18.0.10], ports: [8443]}
  - {name: wild, mark: 7, addresses: [198.18.0.10], ports: [9000]}
  - {name: dns, mark: 8, protocol: both, addresses: [198.18.0.10], ports: [53]}
  - {name: unused, mark: 9, addresses: [198.18.0.10], ports: [7000]}
services:
`
	svc := func(name string, mark int) string {
		return "  - {name: " + name + ", fwmark: " + itoa(mark) + ", servers: [{address: 198.19.0.11}]}\n"
	}
	body := svc("web", 1) + svc("ftp", 2) + svc("routed", 3) + svc("net", 4) +
		"  - {name: dir, fwmark: 5, mode: director, servers: [{address: 198.19.0.11}]}\n" + svc("held", 6) + svc("wild", 7) + svc("dns", 8) +
		"  - {name: plain, listen: 198.18.0.10:8443, servers: [{address: 198.19.0.11:8443}]}\n" +
		"  - {name: any, listen: 0.0.0.0:9000, servers: [{address: 198.19.0.11:9000}]}\n"
	local := func(a netip.Addr) bool { return a.String() == "198.18.0.10" || a.String() == "2001:2::10" }
	for _, tc := range []struct{ head, want string }{
		{"", "1=198.18.0.10:80 198.18.0.10:443 [2001:2::10]:80 [2001:2::10]:443; 8=198.18.0.10:53"},
		{"tproxy: auto\n", "1=198.18.0.10:80 198.18.0.10:443 [2001:2::10]:80 [2001:2::10]:443; 8=198.18.0.10:53"},
		{"tproxy: always\n", ""},
	} {
		cfg, err := config.Parse("l.yaml", []byte(tc.head+classes+body))
		if err != nil {
			t.Fatal(err)
		}
		got := ListenedClasses(cfg, local)
		var parts []string
		for _, m := range []uint32{1, 2, 3, 4, 5, 6, 7, 8, 9} {
			if pairs, ok := got[m]; ok {
				var s []string
				for _, p := range pairs {
					s = append(s, p.String())
				}
				parts = append(parts, itoa(int(m))+"="+strings.Join(s, " "))
			}
		}
		if g := strings.Join(parts, "; "); g != tc.want {
			t.Errorf("%q: listened %q, want %q", tc.head, g, tc.want)
		}
	}
}
