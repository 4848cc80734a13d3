package marks

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParsePorts(t *testing.T) {
	got, err := ParsePorts([]string{"21", "30000-30099", " 443 ", "all"})
	if err != nil {
		t.Fatal(err)
	}
	want := []PortRange{{21, 21}, {30000, 30099}, {443, 443}, {1, 65535}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for in, msg := range map[string]string{
		"0": `port "0"`, "65536": `port "65536"`, "30099-30000": `port range "30099-30000" is reversed`,
		"http": `port "http"`, "1-": `port "1-"`, "-5": `port "-5"`,
	} {
		if _, err := ParsePorts([]string{in}); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParsePorts(%q) = %v, want %q", in, err, msg)
		}
	}
}

func TestParseAddrs(t *testing.T) {
	got, err := ParseAddrs([]string{"198.18.0.10", "2001:db8::/64", "::ffff:198.18.0.11"})
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("198.18.0.10/32"), netip.MustParsePrefix("2001:db8::/64"), netip.MustParsePrefix("198.18.0.11/32")}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, in := range []string{"198.18.0.1/24", "vip", "198.18.0.300"} {
		if _, err := ParseAddrs([]string{in}); err == nil || !strings.Contains(err.Error(), in) {
			t.Errorf("ParseAddrs(%q) = %v, want an error quoting it", in, err)
		}
	}
}

func class(name string, mark uint32, p Protocols, addr string, ports ...PortRange) Class {
	a, _ := ParseAddrs([]string{addr})
	return Class{Name: name, Mark: mark, Protocols: p, Addrs: a, Ports: ports}
}

func TestValidate(t *testing.T) {
	web := class("web", 1, TCP, "198.18.0.10", PortRange{80, 80}, PortRange{443, 443})
	ftp := class("ftp", 2, TCP, "198.18.0.10", PortRange{21, 21}, PortRange{30000, 30099})
	for _, tc := range []struct {
		name string
		set  Set
		want []string
	}{
		{"valid", Set{Classes: []Class{web, ftp, class("quic", 3, UDP, "198.18.0.10", PortRange{443, 443})}}, nil},
		{"mark 0", Set{Classes: []Class{class("zero", 0, TCP, "198.18.0.10", PortRange{80, 80})}}, []string{`class "zero": mark 0 is no mark`}},
		{"mark outside the mask", Set{Mask: 0xff00, Classes: []Class{class("low", 0x1, TCP, "198.18.0.10", PortRange{80, 80})}}, []string{`class "low": mark 0x1 has bits outside the mark mask 0xff00`}},
		{"empty class", Set{Classes: []Class{{Name: "empty", Mark: 4, Protocols: TCP}}}, []string{`class "empty": no destination addresses`, `class "empty": no destination ports`}},
		{"reversed range", Set{Classes: []Class{class("rev", 5, TCP, "198.18.0.10", PortRange{99, 10})}}, []string{`class "rev": port range 99-10`}},
		{"same mark", Set{Classes: []Class{web, class("web2", 1, TCP, "198.18.0.20", PortRange{80, 80})}}, []string{`class "web2": mark 1 is already class "web"'s`}},
		{"overlap", Set{Classes: []Class{web, class("all", 9, Both, "198.18.0.0/24", PortRange{1, 65535})}}, []string{`classes "web" and "all" both claim tcp 198.18.0.10/32 port 80`}},
		{"overlap in a range", Set{Classes: []Class{ftp, class("passive", 8, TCP, "198.18.0.10", PortRange{30050, 30050})}}, []string{`classes "ftp" and "passive" both claim tcp 198.18.0.10/32 port 30050`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := tc.set.Validate()
			var got []string
			for _, e := range errs {
				got = append(got, e.Error())
			}
			if len(tc.want) == 0 && len(got) != 0 {
				t.Fatalf("unexpected errors: %v", got)
			}
			all := strings.Join(got, "\n")
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("errors\n%s\nlack %q", all, w)
				}
			}
		})
	}
}

func TestOtherProtocolDoesNotOverlap(t *testing.T) {
	s := Set{Classes: []Class{
		class("https", 1, TCP, "198.18.0.10", PortRange{443, 443}),
		class("quic", 2, UDP, "198.18.0.10", PortRange{443, 443}),
	}}
	if errs := s.Validate(); len(errs) != 0 {
		t.Errorf("tcp 443 and udp 443 are different claims: %v", errs)
	}
}

func TestMatch(t *testing.T) {
	s := Set{Classes: []Class{
		class("web", 1, TCP, "198.18.0.10", PortRange{80, 80}, PortRange{443, 443}),
		class("ftp", 2, TCP, "198.18.0.0/24", PortRange{21, 21}, PortRange{30000, 30099}),
		class("quic", 3, UDP, "198.18.0.10", PortRange{443, 443}),
	}}
	for _, tc := range []struct {
		p    Protocols
		dst  string
		port uint16
		want uint32
	}{
		{TCP, "198.18.0.10", 443, 1}, {UDP, "198.18.0.10", 443, 3}, {TCP, "198.18.0.77", 30050, 2},
		{TCP, "::ffff:198.18.0.10", 80, 1}, {TCP, "198.18.0.10", 8080, 0}, {TCP, "198.18.1.10", 21, 0},
	} {
		c, ok := s.Match(tc.p, netip.MustParseAddr(tc.dst), tc.port)
		if (tc.want == 0) == ok || (ok && c.Mark != tc.want) {
			t.Errorf("Match(%v, %s, %d) = %d, %v; want %d", tc.p, tc.dst, tc.port, c.Mark, ok, tc.want)
		}
	}
}

func TestListenPairs(t *testing.T) {
	a4, a6 := netip.MustParsePrefix("198.18.0.10/32"), netip.MustParsePrefix("2001:2::10/128")
	web := Class{Mark: 1, Protocols: TCP, Addrs: []netip.Prefix{a4, a6}, Ports: []PortRange{{80, 80}, {443, 443}}}
	pairs, ok := web.ListenPairs(16)
	want := []string{"198.18.0.10:80", "198.18.0.10:443", "[2001:2::10]:80", "[2001:2::10]:443"}
	if !ok || len(pairs) != len(want) {
		t.Fatalf("web: %v %v, want %v", pairs, ok, want)
	}
	for i, p := range pairs {
		if p.String() != want[i] {
			t.Errorf("pair %d = %s, want %s", i, p, want[i])
		}
	}
	for name, c := range map[string]Class{
		"udp only":      {Protocols: UDP, Addrs: web.Addrs, Ports: web.Ports},
		"a prefix":      {Protocols: TCP, Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}, Ports: web.Ports},
		"passive range": {Protocols: Both, Addrs: []netip.Prefix{a4}, Ports: []PortRange{{21, 21}, {30000, 30099}}},
		"all ports":     {Protocols: TCP, Addrs: []netip.Prefix{a4}, Ports: []PortRange{{1, 65535}}},
		"over limit":    {Protocols: TCP, Addrs: []netip.Prefix{a4, a6}, Ports: []PortRange{{80, 88}}},
	} {
		if pairs, ok := c.ListenPairs(16); ok {
			t.Errorf("%s: listenable as %v", name, pairs)
		}
	}
	if _, ok := (Class{Protocols: Both, Addrs: []netip.Prefix{a4}, Ports: []PortRange{{8000, 8015}}}).ListenPairs(16); !ok {
		t.Error("16 pairs of a tcp+udp class: not listenable at limit 16")
	}
}
