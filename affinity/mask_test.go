package affinity

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseMask4(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int
		wantErr string
	}{
		{in: "255.255.255.0", want: 24},
		{in: "255.255.255.255", want: 32},
		{in: "0.0.0.0", want: 0},
		{in: "255.255.128.0", want: 17},
		{in: "24", want: 24},
		{in: "/16", want: 16},
		{in: "0", want: 0},
		{in: " 255.0.0.0 ", want: 8},
		{in: "255.0.255.0", wantErr: `netmask "255.0.255.0" is not contiguous`},
		{in: "0.255.255.255", wantErr: "not contiguous"},
		{in: "33", wantErr: `netmask "33" is neither`},
		{in: "-1", wantErr: "neither"},
		{in: "ffff::", wantErr: "neither"},
		{in: "255.255.255", wantErr: `netmask "255.255.255" is not an IPv4 dotted mask`},
		{in: "garbage", wantErr: `"garbage"`},
		{in: "", wantErr: `netmask ""`},
	} {
		got, err := ParseMask4(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseMask4(%q) = %d, %v; want error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseMask4(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestParseMask6(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int
		wantErr bool
	}{
		{in: "64", want: 64}, {in: "/48", want: 48}, {in: "128", want: 128}, {in: "1", want: 1},
		{in: "0", wantErr: true}, {in: "129", wantErr: true}, {in: "200", wantErr: true},
		{in: "ffff:ffff::", wantErr: true}, {in: "", wantErr: true}, {in: "1000", wantErr: true},
	} {
		got, err := ParseMask6(tc.in)
		if tc.wantErr {
			if err == nil || !strings.Contains(err.Error(), "\""+tc.in+"\"") {
				t.Errorf("ParseMask6(%q) = %d, %v; want an error quoting the input", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseMask6(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestMaskApply(t *testing.T) {
	m24, _ := ParseMask("255.255.255.0", "64")
	m0, _ := ParseMask("0", "1")
	m17, _ := ParseMask("17", "61")
	for _, tc := range []struct {
		m        Mask
		in, want string
	}{
		{Mask{}, "192.0.2.77", "192.0.2.77"},
		{Mask{}, "2001:db8::1", "2001:db8::1"},
		{m24, "192.0.2.77", "192.0.2.0"},
		{m24, "::ffff:192.0.2.77", "192.0.2.0"}, // v4-mapped is the v4 client
		{m24, "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"},
		{m24, "fe80::1%eth0", "fe80::"},
		{m0, "203.0.113.9", "0.0.0.0"}, // mask 0: every client shares one template
		{m0, "2001:db8::1", "::"},
		{m17, "10.1.255.255", "10.1.128.0"},
		{m17, "2001:db8:ffff:ffff::1", "2001:db8:ffff:fff8::"},
	} {
		if got := tc.m.Apply(netip.MustParseAddr(tc.in)); got != netip.MustParseAddr(tc.want) {
			t.Errorf("%v.Apply(%s) = %s, want %s", tc.m, tc.in, got, tc.want)
		}
	}
}

func TestMaskDefaultsAndString(t *testing.T) {
	var m Mask
	if m.Bits4() != 32 || m.Bits6() != 128 {
		t.Fatalf("zero Mask = /%d /%d, want /32 /128", m.Bits4(), m.Bits6())
	}
	if got := m.String(); got != "255.255.255.255/128" {
		t.Errorf("String() = %q", got)
	}
	m, _ = ParseMask("0.0.0.0", "48")
	if got := m.String(); got != "0.0.0.0/48" {
		t.Errorf("String() = %q", got)
	}
	if _, err := NewMask(33, 64); err == nil {
		t.Error("NewMask(33, 64) succeeded")
	}
	if _, err := NewMask(24, 0); err == nil {
		t.Error("NewMask(24, 0) succeeded")
	}
}

func FuzzParseMask(f *testing.F) {
	for _, s := range []string{"255.255.255.0", "24", "/8", "0", "64", "255.0.255.0", "", "1.2.3.4.5", "/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := ParseMask4(s); err == nil {
			if n < 0 || n > 32 {
				t.Fatalf("ParseMask4(%q) = %d", s, n)
			}
			m, err := NewMask(n, 128)
			if err != nil {
				t.Fatal(err)
			}
			// Round trip through the dotted form.
			dotted := m.String()[:len(m.String())-len("/128")]
			if back, err := ParseMask4(dotted); err != nil || back != n {
				t.Fatalf("round trip of %q via %q = %d, %v", s, dotted, back, err)
			}
		} else if !strings.Contains(err.Error(), "netmask") {
			t.Fatalf("error %q does not say what it parsed", err)
		}
		if n, err := ParseMask6(s); err == nil && (n < 1 || n > 128) {
			t.Fatalf("ParseMask6(%q) = %d", s, n)
		}
	})
}

// TestClientKey: the lookup path's key, built in registers, is the key of
// the masked address Apply returns, for every family, form and mask.
func TestClientKey(t *testing.T) {
	addrs := []netip.Addr{
		netip.MustParseAddr("198.18.7.201"), netip.MustParseAddr("::ffff:198.18.7.201"),
		netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("255.255.255.255"),
		netip.MustParseAddr("2001:2::dead:beef:1234:5678"), netip.MustParseAddr("fe80::1%eth0"),
		netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), netip.MustParseAddr("::"),
	}
	for bits4 := 0; bits4 <= 32; bits4++ {
		for _, bits6 := range []int{1, 7, 48, 63, 64, 65, 100, 127, 128} {
			m, err := NewMask(bits4, bits6)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range addrs {
				if got, want := clientKey(3, m, a), makeKey(3, m.Apply(a)); got != want {
					t.Errorf("mask %s, %s: clientKey %+v, want %+v", m, a, got, want)
				}
			}
		}
	}
}
