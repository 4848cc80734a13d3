package nft

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/tetherlb/tether/testenv"
	"golang.org/x/sys/unix"
)

func testDirector(native bool) Director {
	ap := netip.MustParseAddrPort
	return Director{
		Family:   nftables.TableFamilyIPv4,
		Queue:    Queue{Num: 3, Total: 2, Bypass: true, Native: native},
		MarkMask: 0xffff,
		Services: []DirectorService{
			{Proto: unix.IPPROTO_TCP, VIP: ap("198.18.0.10:80"), FallbackBits: 24, Choices: []Choice{
				{Mark: 0x7e000000, Server: ap("198.19.0.11:8080"), Weight: 1},
				{Mark: 0x7e000001, Server: ap("198.19.0.12:8080"), Weight: 1},
			}},
			{Mark: 0x200, FTP: true, FallbackBits: 32, Choices: []Choice{
				{Mark: 0x7e000002, Server: netip.AddrPortFrom(netip.MustParseAddr("198.19.0.11"), 0), Weight: 1},
			}},
		},
		Masquerade: true,
	}
}

// The director table goes into a kernel namespace whole, with the queue
// statement the kernel has, and lists the way Show renders it.
func TestDirectorApplies(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Backends: 1, Label: "dir"})
	needNft(t)
	var native bool
	err := env.LB.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		if native, err = ProbeQueue(c, nftables.TableFamilyIPv4); err != nil {
			return err
		}
		if err := testDirector(native).Add(c, false); err != nil {
			return err
		}
		AddNATAnchor(c, nftables.TableFamilyIPv4)
		return c.Flush()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("native queue: %v", native)
	got := run(t, env.LB, "nft", "list", "table", "ip", TableName)
	t.Log(got)
	for _, want := range []string{
		"ct mark @choices meta mark set ct mark",
		"meta l4proto tcp dnat ip to meta mark map @dnat_port",
		"dnat to meta mark map @dnat_addr",
		"ct state new ip daddr 198.18.0.10 tcp dport 80 meta mark != @choices",
		`ct helper set "ftp"`,
		"ct mark @choices masquerade",
		"0x7e000000 : 198.19.0.11 . 8080",
		"jhash ip saddr & 255.255.255.0 mod 2",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if tables := run(t, env.LB, "nft", "list", "tables"); strings.Contains(tables, "tether_probe") {
		t.Errorf("the queue probe left its table: %s", tables)
	}
}
