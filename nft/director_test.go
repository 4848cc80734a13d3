package nft

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

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

// With no tether reading the queue, fail-open (bypass) sends a new flow to
// the kernel's fallback choice, a hash of the masked client over the
// servers, and fail-closed drops it; this is what a queue overrun does too.
func TestDirectorFailOpenWithoutReader(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 8, Backends: 2, Label: "fopen"})
	needNft(t)
	for _, b := range env.Backends {
		if _, err := b.ServeName(8080); err != nil {
			t.Fatal(err)
		}
	}
	apply := func(bypass bool) {
		t.Helper()
		d := Director{Family: nftables.TableFamilyIPv4, Queue: Queue{Num: 7, Bypass: bypass}, Services: []DirectorService{{
			Proto: unix.IPPROTO_TCP, VIP: netip.AddrPortFrom(testenv.VIP, 80), FallbackBits: 32,
			Choices: []Choice{
				{Mark: 0x7e000000, Server: netip.AddrPortFrom(testenv.BackendAddr(0), 8080), Weight: 1},
				{Mark: 0x7e000001, Server: netip.AddrPortFrom(testenv.BackendAddr(1), 8080), Weight: 1},
			},
		}}}
		err := env.LB.Do(func() error {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			native, err := ProbeQueue(c, nftables.TableFamilyIPv4)
			if err != nil {
				return err
			}
			d.Queue.Native = native
			if err := d.Add(c, false); err != nil {
				return err
			}
			return c.Flush()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	apply(true)
	visits := env.Clients[0].Drive(context.Background(), testenv.VIP, []int{80}, 2)
	s := testenv.Summarize(visits)
	if s.Failed != 0 || len(s.Mixed) != 0 || len(s.PerBackend) != 2 {
		t.Errorf("fail-open without a reader: %d of %d failed, %d clients mixed, spread %s: %v", s.Failed, s.Visits, len(s.Mixed), s.Spread(), s.Errors)
	}
	apply(false)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if c, err := env.Clients[0].Dial(ctx, "tcp", env.Clients[0].Addr(0), netip.AddrPortFrom(testenv.VIP, 80).String()); err == nil {
		c.Close()
		t.Errorf("fail-closed without a reader: a new flow got through")
	} else if !errors.Is(err, context.DeadlineExceeded) && !os.IsTimeout(err) {
		t.Errorf("fail-closed: %v, want the SYN dropped (a timeout)", err)
	}
}
