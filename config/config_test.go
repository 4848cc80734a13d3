package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/tetherlb/tether/affinity"
)

const good = `
snapshot: /var/lib/tether/affinity.snap
metrics:
  listen: 127.0.0.1:9105
services:
  - name: web
    listen: 198.18.0.10:80
    scheduler: mh
    persistence:
      timeout: 600
      netmask: 255.255.255.0
    servers:
      - address: 198.18.1.1:8080
        weight: 3
      - address: 198.18.1.2:8080
      - address: 198.18.1.3:8080
        weight: 0
  - name: api6
    listen: "[2001:db8::10]:443"
    persistence: {netmask6: /64}
    limits: {max_connections: 100, connect_timeout: 2s}
    servers:
      - address: "[2001:db8::1:1]:443"
`

// parsed compares the values Parse parses (addresses, masks) by ==.
var parsed = cmpopts.EquateComparable(netip.AddrPort{}, netip.Addr{}, netip.Prefix{}, affinity.Mask{})

func TestParseNormalizes(t *testing.T) {
	f, err := Parse("tether.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	one, three, zero := 1, 3, 0
	want := &File{
		Log:              Log{Level: "info", Format: "text"},
		Snapshot:         "/var/lib/tether/affinity.snap",
		SnapshotInterval: Duration(30 * time.Second),
		Metrics:          Metrics{Listen: "127.0.0.1:9105"},
		Affinity:         Affinity{Capacity: 1 << 20},
		DrainTimeout:     Duration(30 * time.Second),
		Mode:             "proxy",
		Services: []Service{{
			Name: "web", Protocol: "tcp", Listen: "198.18.0.10:80", VIP: netip.MustParseAddrPort("198.18.0.10:80"), Scheduler: "mh", Mode: "proxy",
			Persistence: &Persistence{Timeout: Duration(600 * time.Second), Netmask: "255.255.255.0", Netmask6: "128", Mask: mask("255.255.255.0", "")},
			Limits:      Limits{ConnectTimeout: Duration(5 * time.Second), ConnectAttempts: 3},
			Servers: []Server{
				{Address: "198.18.1.1:8080", Addr: netip.MustParseAddrPort("198.18.1.1:8080"), Weight: &three},
				{Address: "198.18.1.2:8080", Addr: netip.MustParseAddrPort("198.18.1.2:8080"), Weight: &one},
				{Address: "198.18.1.3:8080", Addr: netip.MustParseAddrPort("198.18.1.3:8080"), Weight: &zero},
			},
		}, {
			Name: "api6", Protocol: "tcp", Listen: "[2001:db8::10]:443", VIP: netip.MustParseAddrPort("[2001:db8::10]:443"), Scheduler: "wlc", Mode: "proxy",
			Persistence: &Persistence{Timeout: Duration(300 * time.Second), Netmask: "255.255.255.255", Netmask6: "64", Mask: mask("", "64")},
			Limits:      Limits{MaxConnections: 100, ConnectTimeout: Duration(2 * time.Second), ConnectAttempts: 3},
			Servers:     []Server{{Address: "[2001:db8::1:1]:443", Addr: netip.MustParseAddrPort("[2001:db8::1:1]:443"), Weight: &one}},
		}},
	}
	if diff := cmp.Diff(want, f, parsed); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
	// The normalized form parses back to itself.
	out, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse("normalized", out)
	if err != nil {
		t.Fatalf("normalized config does not parse: %v\n%s", err, out)
	}
	if diff := cmp.Diff(f, again, parsed); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

// Every bad case names the file, the line and the key.
func TestParseErrors(t *testing.T) {
	base := func(service string) string {
		return "services:\n" + service
	}
	svc := func(extra string) string {
		return base("  - name: web\n    listen: 127.0.0.1:8080\n" + extra + "    servers:\n      - address: 127.0.0.2:80\n")
	}
	for _, tc := range []struct {
		name, in string
		want     []string // each must appear in the error text
	}{
		{"unknown top-level key", "servces: []\n", []string{"cfg.yaml:1:", "field servces not found"}},
		{"unknown service key", svc("    shceduler: rr\n"), []string{"cfg.yaml:4:", "field shceduler not found in type Service"}},
		{"unknown server key", base("  - name: web\n    listen: 127.0.0.1:8080\n    servers:\n      - address: 127.0.0.2:80\n        wieght: 2\n"), []string{"cfg.yaml:6:", "field wieght not found"}},
		{"wrong type", svc("    limits: {max_connections: lots}\n"), []string{"cfg.yaml:4:", "cannot unmarshal", "lots"}},
		{"duplicate key", svc("    scheduler: rr\n    scheduler: wrr\n"), []string{"cfg.yaml:5:", "already defined"}},
		{"duplicate service name", base("  - name: web\n    listen: 127.0.0.1:8080\n    servers: [{address: 127.0.0.2:80}]\n  - name: web\n    listen: 127.0.0.1:8081\n    servers: [{address: 127.0.0.2:80}]\n"),
			[]string{"cfg.yaml:5: services[1].name: duplicate service name \"web\" (also services[0])"}},
		{"server listed twice", base("  - name: web\n    listen: 127.0.0.1:8080\n    servers:\n      - address: 127.0.0.2:80\n      - address: 127.0.0.2:80\n"),
			[]string{"cfg.yaml:6: services[0].servers[1].address: server 127.0.0.2:80 is listed twice (also services[0].servers[0])"}},
		{"unparsable listen", base("  - name: web\n    listen: 127.0.0.1\n    servers: [{address: 127.0.0.2:80}]\n"), []string{"cfg.yaml:3: services[0].listen: \"127.0.0.1\" is not an address:port"}},
		{"unparsable server", base("  - name: web\n    listen: 127.0.0.1:80\n    servers:\n      - address: backend-1\n"), []string{"cfg.yaml:5: services[0].servers[0].address: \"backend-1\" is not an address:port"}},
		{"weight too big", base("  - name: web\n    listen: 127.0.0.1:80\n    servers:\n      - address: 127.0.0.2:80\n        weight: 70000\n"), []string{"cfg.yaml:6: services[0].servers[0].weight: 70000 is outside 0..65535"}},
		{"negative weight", base("  - name: web\n    listen: 127.0.0.1:80\n    servers:\n      - address: 127.0.0.2:80\n        weight: -1\n"), []string{"weight: -1 is outside 0..65535"}},
		{"negative timeout", svc("    persistence:\n      timeout: -5s\n"), []string{"cfg.yaml:5: services[0].persistence.timeout: -5s is negative"}},
		{"bad duration", svc("    persistence:\n      timeout: soon\n"), []string{"cfg.yaml:5:", `"soon" is not a duration`}},
		{"bad netmask", svc("    persistence:\n      netmask: 255.0.255.0\n"), []string{"cfg.yaml:5: services[0].persistence.netmask:", `"255.0.255.0" is not contiguous`}},
		{"bad netmask6", svc("    persistence:\n      netmask6: 129\n"), []string{"persistence.netmask6:", `"129"`}},
		{"bad scheduler", svc("    scheduler: fastest\n"), []string{"cfg.yaml:4: services[0].scheduler: \"fastest\" is not one of rr, wrr"}},
		{"unknown protocol", svc("    protocol: sctp\n"), []string{`services[0].protocol: "sctp" is not tcp or udp`}},
		{"one_packet on tcp", svc("    one_packet: true\n"), []string{"services[0].one_packet: is for udp services"}},
		{"no services", "snapshot: /tmp/x\n", []string{"services: no services"}},
		{"no servers", base("  - name: web\n    listen: 127.0.0.1:80\n    servers: []\n"), []string{"services[0].servers: no servers"}},
		{"port 0 without persistence", base("  - name: web\n    listen: 127.0.0.1:0\n    servers: [{address: 127.0.0.2:80}]\n"), []string{"needs persistence"}},
		{"negative limit", svc("    limits: {max_connections_per_server: -2}\n"), []string{"services[0].limits.max_connections_per_server: is negative"}},
		{"not yaml", "services: [\n", []string{"cfg.yaml:"}},
		{"bad metrics listen", "metrics: {listen: 9105}\n" + svc(""), []string{"cfg.yaml:1: metrics.listen:"}},
		{"bad mode", svc("    mode: kernel\n"), []string{`cfg.yaml:4: services[0].mode: "kernel" is not proxy or director`}},
		{"bad global mode", "mode: dsr\n" + svc(""), []string{`cfg.yaml:1: mode: "dsr" is not proxy or director`}},
		{"bad expire_nodest", "director: {expire_nodest: drop}\n" + svc(""), []string{`cfg.yaml:1: director.expire_nodest: "drop" is not keep or reset`}},
		{"one_packet in director", "services:\n  - name: dns\n    protocol: udp\n    mode: director\n    one_packet: true\n    listen: 127.0.0.1:53\n    servers: [{address: 127.0.0.2:53}]\n",
			[]string{"cfg.yaml:5: services[0].one_packet: is for the socket proxy"}},
		{"director across families", "services:\n  - name: web\n    mode: director\n    listen: 198.18.0.10:80\n    servers: [{address: \"[2001:db8::1]:80\"}]\n",
			[]string{"cfg.yaml:5: services[0].servers[0].address: [2001:db8::1]:80: the director rewrites addresses and cannot cross from an IPv4 VIP to an IPv6 server"}},
		{"class mark is a choice mark", "mode: director\ndirector: {mark_base: 0x100}\nmarks:\n  - {name: web, mark: 0x101, addresses: [198.18.0.10], ports: [80, 443]}\n" +
			"services:\n  - name: web\n    fwmark: 0x101\n    servers: [{address: 198.19.0.11}, {address: 198.19.0.12}]\n",
			[]string{"cfg.yaml:4: marks[0].mark: 0x101 is one of the director's server-choice marks 0x100..0x101 (director.mark_base)"}},
		{"admin listen without token", "admin: {listen: 127.0.0.1:9106}\n" + svc(""), []string{"cfg.yaml:1: admin.listen: needs admin.token_file"}},
		{"cluster bind", "cluster: {bind: 7946}\n" + svc(""), []string{`cfg.yaml:1: cluster.bind: "7946" is not an address:port`}},
		{"cluster join", "cluster:\n  join: [198.18.0.1:7946, lb2]\n" + svc(""), []string{`cfg.yaml:2: cluster.join[1]: "lb2" is not host:port`}},
		{"cluster advertise", "cluster: {advertise: 0.0.0.0:7946}\n" + svc(""), []string{`cluster.advertise: "0.0.0.0:7946": the others cannot reach`}},
		{"cluster push pull", "cluster: {push_pull_interval: 10ms}\n" + svc(""), []string{"cluster.push_pull_interval: 10ms is shorter than 1s"}},
		{"relative admin socket", "admin: {socket: tether.sock}\n" + svc(""), []string{`cfg.yaml:1: admin.socket: "tether.sock" is not an absolute path`}},
		{"check without type", svc("    health_check: {interval: 1s}\n"), []string{"cfg.yaml:4: services[0].health_check.type: missing: one of tcp, http, https, smtp, dns, udp, exec"}},
		{"unknown check type", svc("    health_check: {type: ping}\n"), []string{`services[0].health_check.type: "ping" is not one of tcp, http, https, smtp, dns, udp, exec`}},
		{"field of another check type", svc("    health_check:\n      type: tcp\n      path: /health\n"), []string{"cfg.yaml:6: services[0].health_check.path: is for http checks, and this one is tcp"}},
		{"bad status range", svc("    health_check: {type: http, expect_status: 200-99}\n"), []string{`services[0].health_check.expect_status: "200-99" is not a status code or range`}},
		{"exec without command", svc("    health_check: {type: exec}\n"), []string{"services[0].health_check.command: missing"}},
		{"bad start", svc("    health_check: {type: tcp, start: maybe}\n"), []string{`health_check.start: "maybe" is not up or down`}},
		{"negative rise", svc("    health_check: {type: tcp, rise: -1}\n"), []string{"health_check.rise: -1 is negative"}},
		{"bad server check", base("  - name: web\n    listen: 127.0.0.1:80\n    servers:\n      - address: 127.0.0.2:80\n        health_check: {type: udp, command: [true]}\n"),
			[]string{"cfg.yaml:6: services[0].servers[0].health_check.command: is for exec checks, and this one is udp"}},
		{"mark server check without port", "marks:\n  - {name: web, mark: 1, addresses: [198.18.0.10], ports: [80, 443]}\nservices:\n  - name: web\n    fwmark: 1\n    health_check: {type: tcp}\n    servers: [{address: 198.19.0.11}]\n",
			[]string{"services[0].health_check.port: missing: server 198.19.0.11 has no port, so a tcp check needs one"}},
		{"quorum above total weight", svc("    quorum: 5\n"), []string{"cfg.yaml:4: services[0].quorum: 5 is more than the servers' total weight 1"}},
		{"quorum hook without quorum", svc("    quorum_down: [/bin/true]\n"), []string{"services[0].quorum_up: quorum_up and quorum_down need a quorum"}},
		{"empty quorum hook", svc("    quorum: 1\n    quorum_up: [\"\"]\n"), []string{"services[0].quorum_up: the command is empty"}},
		{"sorry server is a server", svc("    sorry_server: 127.0.0.2:80\n"), []string{"services[0].sorry_server: 127.0.0.2:80 is also one of the service's servers"}},
		{"bad sorry server", svc("    sorry_server: elsewhere\n"), []string{`cfg.yaml:4: services[0].sorry_server: "elsewhere" is not an address:port`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("cfg.yaml", []byte(tc.in))
			if err == nil {
				t.Fatalf("no error for:\n%s", tc.in)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n  %s\nlacks %q", err, w)
				}
			}
		})
	}
}

// Director mode: the file's mode is every service's default, and the
// director's settings get their defaults only when a service uses it.
func TestDirectorDefaults(t *testing.T) {
	f, err := Parse("d.yaml", []byte("mode: director\nservices:\n  - name: web\n    listen: 198.18.0.10:80\n    servers: [{address: 198.19.0.11:80}]\n"+
		"  - name: api\n    mode: proxy\n    listen: 198.18.0.10:81\n    servers: [{address: 198.19.0.11:81}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := []Mode{f.Services[0].Mode, f.Services[1].Mode}; got[0] != "director" || got[1] != "proxy" {
		t.Errorf("modes %v, want [director proxy]", got)
	}
	want := Director{Queues: 1, QueueLength: DefaultQueueLength, MarkBase: DefaultMarkBase, ExpireNodest: "keep"}
	if f.Director != want {
		t.Errorf("director %+v, want %+v", f.Director, want)
	}
	g, err := Parse("p.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if g.Director != (Director{}) {
		t.Errorf("a file without director services got director settings %+v", g.Director)
	}
}

func TestParseReportsEveryError(t *testing.T) {
	in := "services:\n  - name: a\n    listen: nowhere\n    servers:\n      - address: x\n        weight: 99999\n"
	_, err := Parse("cfg.yaml", []byte(in))
	var es Errors
	if !errors.As(err, &es) || len(es) != 3 {
		t.Fatalf("err = %v, want 3 errors", err)
	}
}

func TestPortZeroPersistentIsAccepted(t *testing.T) {
	in := "services:\n  - name: all\n    listen: 127.0.0.1:0\n    persistence: {}\n    servers: [{address: 127.0.0.2:80}]\n"
	if _, err := Parse("cfg.yaml", []byte(in)); err != nil {
		t.Fatalf("a persistent port-0 service is valid config (the socket proxy refuses it): %v", err)
	}
}

func TestLoad(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load of a missing file: %v", err)
	}
	p := filepath.Join(t.TempDir(), "tether.yaml")
	os.WriteFile(p, []byte(good), 0o600)
	if _, err := Load(p); err != nil {
		t.Fatal(err)
	}
}

// The example the README points at stays valid.
func TestExampleConfigIsValid(t *testing.T) {
	for _, f := range []string{"../examples/tether.yaml", "../examples/marks.yaml", "../examples/director.yaml", "../examples/cluster/tether.yaml"} {
		if _, err := Load(f); err != nil {
			t.Fatal(err)
		}
	}
}

const marksGood = `
mark_mask: 0xff00
marks:
  - name: web
    mark: 0x100
    addresses: [198.18.0.10]
    ports: [80, 443]
  - name: ftp
    mark: 0x200
    protocol: tcp
    addresses: [198.18.0.10, "2001:db8::10"]
    ports: [21, 30000-30099]
services:
  - name: web
    fwmark: 0x100
    persistence: {netmask: 24}
    servers:
      - address: 198.19.0.11
      - address: 198.19.0.12
  - name: ftp
    fwmark: 0x200
    persistence: {}
    servers: [{address: 198.19.0.11}, {address: "198.19.0.12:2121"}]
`

func TestParseMarks(t *testing.T) {
	f, err := Parse("m.yaml", []byte(marksGood))
	if err != nil {
		t.Fatal(err)
	}
	set := f.MarkSet
	if len(set.Classes) != 2 || set.MarkMask() != 0xff00 {
		t.Fatalf("MarkSet = %+v", set)
	}
	c, ok := set.ByMark(0x200)
	if !ok || len(c.Ports) != 2 || c.Ports[1].To != 30099 || len(c.Addrs) != 2 {
		t.Errorf("ftp class = %+v", c)
	}
	if got := f.Services[0].Servers[0].Address; got != "198.19.0.11" {
		t.Errorf("a mark service's server without a port normalizes to %q", got)
	}
	// With marks, their defaults are filled in (tether check prints them).
	if f.TProxyPort != DefaultTProxyPort || f.TProxy != TProxyAuto {
		t.Errorf("tproxy_port %d, tproxy %q: want the defaults %d and %q", f.TProxyPort, f.TProxy, DefaultTProxyPort, TProxyAuto)
	}
}

func TestParseMarksErrors(t *testing.T) {
	svc := "services:\n  - name: s\n    fwmark: 1\n    servers: [{address: 198.19.0.11}]\n"
	class := func(body string) string { return "marks:\n  - name: web\n    mark: 1\n" + body }
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"mark 0", "marks:\n  - name: zero\n    mark: 0\n    addresses: [198.18.0.10]\n    ports: [80]\n" + svc,
			[]string{`m.yaml:2: marks[0]: class "zero": mark 0 is no mark`}},
		{"reversed range", class("    addresses: [198.18.0.10]\n    ports: [30099-30000]\n") + svc, []string{`m.yaml:5: marks[0].ports: port range "30099-30000" is reversed`}},
		{"port out of range", class("    addresses: [198.18.0.10]\n    ports: [70000]\n") + svc, []string{`marks[0].ports: port "70000"`}},
		{"empty class", class("    addresses: []\n    ports: []\n") + svc, []string{`class "web": no destination addresses`, `class "web": no destination ports`}},
		{"overlap names both", class("    addresses: [198.18.0.10]\n    ports: [80, 443]\n") +
			"  - name: all\n    mark: 2\n    protocol: both\n    addresses: [198.18.0.0/24]\n    ports: [all]\n" + svc,
			[]string{`m.yaml:6: marks[1]: classes "web" and "all" both claim tcp 198.18.0.10/32 port 80`}},
		{"unknown fwmark", class("    addresses: [198.18.0.10]\n    ports: [80]\n") + "services:\n  - name: s\n    fwmark: 7\n    servers: [{address: 198.19.0.11}]\n",
			[]string{`services[0].fwmark: no class in marks has mark 7`}},
		{"listen and fwmark", class("    addresses: [198.18.0.10]\n    ports: [80]\n") + "services:\n  - name: s\n    fwmark: 1\n    listen: 127.0.0.1:80\n    servers: [{address: 198.19.0.11:80}]\n",
			[]string{`services[0].fwmark: a service has either listen or fwmark, not both`}},
		{"port-less server of a listen service", "services:\n  - name: s\n    listen: 127.0.0.1:80\n    servers: [{address: 198.19.0.11}]\n",
			[]string{`services[0].servers[0].address: "198.19.0.11" is not an address:port`}},
		{"tproxy neither auto nor always", "tproxy: never\n" + class("    addresses: [198.18.0.10]\n    ports: [80]\n") + svc,
			[]string{`m.yaml:1: tproxy: "never" is not auto or always`}},
		{"bad mark address", class("    addresses: [vip]\n    ports: [80]\n") + svc, []string{`marks[0].addresses: "vip" is not an address or prefix`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("m.yaml", []byte(tc.in))
			if err == nil {
				t.Fatalf("no error for:\n%s", tc.in)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n  %s\nlacks %q", err, w)
				}
			}
		})
	}
}

// A persistent port-0 service becomes a mark service over every port of
// its VIP but those another service listens on.
func TestPortZeroBecomesMarkClass(t *testing.T) {
	in := `mark_mask: 0xff00
services:
  - name: all
    listen: 198.18.0.10:0
    persistence: {}
    servers: [{address: 198.19.0.11}]
  - name: admin
    listen: 198.18.0.10:8080
    servers: [{address: 198.19.0.12:8080}]
`
	f, err := Parse("p0.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []MarkClass{{Name: "port0-all", Mark: 0xff00, Protocol: "tcp", Addresses: []string{"198.18.0.10"}, Ports: []string{"1-8079", "8081-65535"}}}
	if diff := cmp.Diff(want, f.Marks); diff != "" {
		t.Errorf("marks (-want +got):\n%s", diff)
	}
	if s := f.Services[0]; s.Fwmark != 0xff00 || s.Listen != "" {
		t.Errorf("the port-0 service is %+v, want fwmark 0xff00 and no listen", s)
	}
	// A class of the user's on that VIP overlaps it: an error naming both.
	_, err = Parse("p0.yaml", []byte("marks:\n  - name: web\n    mark: 1\n    addresses: [198.18.0.10]\n    ports: [443]\n"+in[len("mark_mask: 0xff00\n"):]))
	if err == nil || !strings.Contains(err.Error(), `classes "web" and "port0-all" both claim tcp 198.18.0.10/32 port 443`) {
		t.Errorf("overlap with a port-0 service: %v", err)
	}
}

func TestUDPDefaultsAndSharedAddress(t *testing.T) {
	in := "services:\n  - name: dns\n    protocol: udp\n    listen: 127.0.0.1:53\n    servers: [{address: 127.0.0.2:53}]\n  - name: dns-tcp\n    listen: 127.0.0.1:53\n    servers: [{address: 127.0.0.2:53}]\n"
	f, err := Parse("u.yaml", []byte(in))
	if err != nil {
		t.Fatalf("a udp and a tcp service on one address:port: %v", err)
	}
	if l := f.Services[0].Limits; l.IdleTimeout.D() != DefaultUDPIdleTimeout || l.MaxFlows != 0 {
		t.Errorf("udp limits %+v, want the flow defaults", l)
	}
	if l := f.Services[1].Limits; l.IdleTimeout != 0 || l.MaxFlows != 0 {
		t.Errorf("tcp limits %+v got udp defaults", l)
	}
}

// A check's defaults are filled in, a server's own check replaces the
// service's, and the normalized file parses back to itself.
func TestHealthCheckDefaults(t *testing.T) {
	f, err := Parse("h.yaml", []byte(`services:
  - name: web
    listen: 198.18.0.10:80
    health_check: {type: http}
    inhibit_on_failure: true
    sorry_server: 198.19.0.99:80
    quorum: 2
    servers:
      - address: 198.19.0.11:80
      - address: 198.19.0.12:80
        health_check: {type: exec, command: [/bin/true], start: down}
`))
	if err != nil {
		t.Fatal(err)
	}
	s := f.Services[0]
	want := &HealthCheck{Type: "http", Interval: Duration(5 * time.Second), Timeout: Duration(2 * time.Second), Rise: 2, Fall: 3, Start: "up", Path: "/", ExpectStatus: "200-399"}
	if diff := cmp.Diff(want, s.Check(s.Servers[0])); diff != "" {
		t.Errorf("service check (-want +got):\n%s", diff)
	}
	if got := s.Check(s.Servers[1]); got.Type != "exec" || got.Start != "down" || got.Rise != 2 {
		t.Errorf("server check %+v, want the server's exec check, starting down, with defaults", got)
	}
	out, _ := f.Marshal()
	again, err := Parse("normalized", out)
	if err != nil {
		t.Fatalf("normalized config does not parse: %v\n%s", err, out)
	}
	if diff := cmp.Diff(f, again, parsed); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func mask(v4, v6 string) affinity.Mask {
	m, err := affinity.ParseMask(v4, v6)
	if err != nil {
		panic(err)
	}
	return m
}
