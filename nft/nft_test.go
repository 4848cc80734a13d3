package nft

import (
	"bytes"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/tetherlb/tether/marks"
	"github.com/tetherlb/tether/testenv"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func class(name string, mark uint32, p marks.Protocols, addrs []string, ports ...string) marks.Class {
	a, err := marks.ParseAddrs(addrs)
	if err != nil {
		panic(err)
	}
	r, err := marks.ParsePorts(ports)
	if err != nil {
		panic(err)
	}
	return marks.Class{Name: name, Mark: mark, Protocols: p, Addrs: a, Ports: r}
}

// testRuleset: HTTP+HTTPS under one mark, FTP with its passive range over
// both families, DNS over UDP; tether owns the second byte of the mark.
func testRuleset(mask uint32) Ruleset {
	return Ruleset{
		Marks: marks.Set{Mask: mask, Classes: []marks.Class{
			class("web", 0x100, marks.TCP, []string{"198.18.0.10"}, "80", "443"),
			class("ftp", 0x200, marks.TCP, []string{"198.18.0.10", "2001:db8::10"}, "21", "30000-30099"),
			class("dns", 0x300, marks.Both, []string{"198.18.0.0/24"}, "53"),
		}},
		TProxyPort: 50080,
	}
}

// Without a kernel: the batch holds the atomic replace of the table with
// the owner flag, the sets, one chain and the rules, in that order.
func TestAddBatchWithoutKernel(t *testing.T) {
	var kinds []string
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		for _, m := range req {
			kinds = append(kinds, msgKind(m))
		}
		return nil, nil // no echo: the kernel would answer with rule handles
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := testRuleset(0xff00).Add(c, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(compress(kinds), " ")
	// 7 sets (web v4+ports, ftp v4+v6+ports, dns v4+ports), 1 chain,
	// 3 restore + 5 classify (web tcp4, ftp tcp4+tcp6, dns tcp4+udp4) +
	// 5 tproxy (web tcp4, ftp tcp4+tcp6, dns tcp4+udp4) = 13 rules.
	want := "begin newtable(owner) deltable newtable(owner) newset+elem*7 newchain newrule*13 end"
	if got != want {
		t.Errorf("batch:\n got %s\nwant %s", got, want)
	}
}

// A listened TCP class is marked packet by packet, with no conntrack, and
// loses its tproxy rule; a listened class that also covers UDP keeps its
// stateful rules and its UDP tproxy rule; one with access lists keeps
// conntrack, which they match on. (What netlink applies is what Show
// says: TestAppliedRulesetMatchesShow/listened.)
func TestListenedClassesAreNotTProxied(t *testing.T) {
	rs := testRuleset(0xff00)
	rs.Listened = []uint32{0x100, 0x300}
	show := rs.Show()
	for _, want := range []string{
		"\t\tip daddr @m256_v4 tcp dport @m256_ports meta mark set meta mark & 0xffff00ff | 0x00000100\n",
		"ct state new ip daddr @m768_v4 tcp dport @m768_ports meta mark set",
		"ct mark & 0x0000ff00 == 0x00000300 meta mark set",
		"meta mark & 0x0000ff00 == 0x00000300 meta l4proto udp tproxy ip to :50080",
		"meta mark & 0x0000ff00 == 0x00000200 meta l4proto tcp tproxy ip to :50080",
	} {
		if !strings.Contains(show, want) {
			t.Errorf("no %q in\n%s", want, show)
		}
	}
	for _, not := range []string{"== 0x00000100 meta l4proto tcp tproxy", "== 0x00000300 meta l4proto tcp tproxy", "ct mark & 0x0000ff00 == 0x00000100"} {
		if strings.Contains(show, not) {
			t.Errorf("%q in\n%s", not, show)
		}
	}
	rs.ACLs = map[uint32]ACL{0x100: {Deny: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}}
	if show := rs.Show(); !strings.Contains(show, "ct state new ip daddr @m256_v4 tcp dport @m256_ports meta mark set") {
		t.Errorf("a listened class with access lists is not marked through conntrack:\n%s", show)
	}
}

// msgKind names a netfilter batch message.
func msgKind(m netlink.Message) string {
	switch m.Header.Type {
	case netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN):
		return "begin"
	case netlink.HeaderType(unix.NFNL_MSG_BATCH_END):
		return "end"
	}
	switch int(m.Header.Type) & 0xff {
	case unix.NFT_MSG_NEWTABLE:
		if bytes.Contains(m.Data, []byte{8, 0, 2, 0, 0, 0, 0, 2}) { // NFTA_TABLE_FLAGS = NFT_TABLE_F_OWNER
			return "newtable(owner)"
		}
		return "newtable"
	case unix.NFT_MSG_DELTABLE:
		return "deltable"
	case unix.NFT_MSG_NEWSET:
		return "newset"
	case unix.NFT_MSG_NEWSETELEM:
		return "elem"
	case unix.NFT_MSG_NEWCHAIN:
		return "newchain"
	case unix.NFT_MSG_NEWRULE:
		return "newrule"
	}
	return "other"
}

// compress turns "newset elem newset elem" into "newset+elem*2", and runs
// of one kind into kind*n.
func compress(kinds []string) []string {
	var out []string
	for i := 0; i < len(kinds); {
		k := kinds[i]
		if k == "newset" && i+1 < len(kinds) && kinds[i+1] == "elem" {
			n := 0
			for i+1 < len(kinds) && kinds[i] == "newset" && kinds[i+1] == "elem" {
				n++
				i += 2
			}
			out = append(out, "newset+elem*"+itoa(n))
			continue
		}
		n := 0
		for i < len(kinds) && kinds[i] == k {
			n++
			i++
		}
		if n > 1 {
			k += "*" + itoa(n)
		}
		out = append(out, k)
	}
	return out
}

func itoa(n int) string { return strconv.Itoa(n) }

// run runs a command in a host and returns its output.
func run(t *testing.T, h *testenv.Host, name string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := h.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s %v in %s: %v\n%s", name, args, h.Name, err, out.String())
	}
	return out.String()
}

func needNft(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nft is missing in CI; .ci/run installs nftables")
		}
		t.Skip("nft is not installed (apt-get install nftables)")
	}
}

// The ruleset applied through netlink in one namespace and Show's text
// loaded with nft -f in another list the same: the two renderings agree,
// and what `tether nft show` prints is what tether applies.
func TestAppliedRulesetMatchesShow(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mask     uint32
		listened []uint32
		acls     map[uint32]ACL
	}{{"mask-all", 0, nil, nil}, {"mask-ff00", 0xff00, nil, nil}, {"listened", 0xff00, []uint32{0x100, 0x300}, nil},
		{"listened-acl", 0, []uint32{0x100}, map[uint32]ACL{0x100: {Allow: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}}}} {
		t.Run(tc.name, func(t *testing.T) {
			env := testenv.Start(t, testenv.Spec{Backends: 1, Label: "nft"})
			needNft(t)
			rs := testRuleset(tc.mask)
			rs.Listened, rs.ACLs = tc.listened, tc.acls
			err := env.LB.Do(func() error {
				c, err := nftables.New()
				if err != nil {
					return err
				}
				if err := rs.Add(c, false); err != nil {
					return err
				}
				return c.Flush()
			})
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(t.TempDir(), "tether.nft")
			os.WriteFile(file, []byte(rs.Show()), 0o644)
			run(t, env.Backends[0], "nft", "-f", file)
			applied := run(t, env.LB, "nft", "list", "table", "inet", TableName)
			loaded := run(t, env.Backends[0], "nft", "list", "table", "inet", TableName)
			if applied != loaded {
				t.Errorf("netlink ruleset and Show differ.\napplied through netlink:\n%s\nShow, loaded by nft:\n%s\nShow:\n%s", applied, loaded, rs.Show())
			}
			// Applying again replaces the table (no duplicate rules).
			env.LB.Do(func() error {
				c, _ := nftables.New()
				rs.Add(c, false)
				return c.Flush()
			})
			if again := run(t, env.LB, "nft", "list", "table", "inet", TableName); again != applied {
				t.Errorf("a second apply changed the table:\n%s", again)
			}
		})
	}
}

// With the owner flag on a lasting connection the table goes with the
// connection (as when tether is killed).
func TestOwnedTableGoesWithTheConnection(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Backends: 1, Label: "own"})
	needNft(t)
	var c *nftables.Conn
	err := env.LB.Do(func() (err error) {
		if c, err = nftables.New(nftables.AsLasting()); err != nil {
			return err
		}
		if err := testRuleset(0).Add(c, true); err != nil {
			return err
		}
		return c.Flush()
	})
	if err != nil {
		t.Fatal(err)
	}
	if out := run(t, env.LB, "nft", "list", "tables"); !strings.Contains(out, "table inet tether") {
		t.Fatalf("table not there while the connection is open: %q", out)
	}
	c.CloseLasting()
	if out := run(t, env.LB, "nft", "list", "tables"); strings.Contains(out, "tether") {
		t.Fatalf("owned table outlived its connection: %q", out)
	}
}

func TestFlush(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Backends: 1, Label: "flush"})
	needNft(t)
	var first, second []string
	err := env.LB.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		testRuleset(0).Add(c, false)
		testDirector(false).Add(c, false)
		AddNATAnchor(c, nftables.TableFamilyIPv4)
		if err := c.Flush(); err != nil {
			return err
		}
		if first, err = Flush(); err != nil {
			return err
		}
		second, err = Flush()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"inet tether", "ip tether", "ip tether_nat_anchor"}
	slices.Sort(first)
	if !slices.Equal(first, want) || len(second) != 0 {
		t.Errorf("Flush removed %q then %q, want %q then none", first, second, want)
	}
	if out := run(t, env.LB, "nft", "list", "tables"); strings.Contains(out, TableName) {
		t.Errorf("table still there after Flush: %q", out)
	}
}

// An owned table is replaced by its owner (a reload) without error.
func TestOwnedTableReplace(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Backends: 1, Label: "repl"})
	needNft(t)
	err := env.LB.Do(func() error {
		c, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return err
		}
		defer c.CloseLasting()
		for range 2 {
			if err := testRuleset(0xff00).Add(c, true); err != nil {
				return err
			}
			if err := c.Flush(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("replacing an owned table: %v", err)
	}
}
