package migrate

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/tetherlb/tether/config"
)

func open(t *testing.T, name string) *os.File {
	t.Helper()
	f, err := os.Open("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// roundTrip renders r and loads it back as `tether check` does.
func roundTrip(t *testing.T, r *Result, source string) *config.File {
	t.Helper()
	out, err := r.YAML(source)
	if err != nil {
		t.Fatal(err)
	}
	f, err := config.Parse(source+".yaml", out)
	if err != nil {
		t.Fatalf("the imported config does not pass check: %v\n%s", err, out)
	}
	return f
}

func notes(r *Result) string {
	var b strings.Builder
	for _, n := range r.Notes {
		b.WriteString(n.String() + "\n")
	}
	return b.String()
}

func TestIPVSAdm(t *testing.T) {
	r, err := IPVSAdm(open(t, "ipvsadm.rules"), open(t, "mangle.rules"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Unreadable() {
		t.Errorf("unreadable lines in a real ipvsadm -S file:\n%s", notes(r))
	}
	f := roundTrip(t, r, "ipvsadm")
	type svc struct {
		Name, Listen, Proto, Sched, Mode string
		Mark                             uint32
		Timeout, Mask                    string
		Servers                          []string
	}
	var got []svc
	for _, s := range f.Services {
		g := svc{s.Name, s.Listen, string(s.Protocol), string(s.Scheduler), string(s.Mode), s.Fwmark, "", "", nil}
		if p := s.Persistence; p != nil {
			g.Timeout, g.Mask = p.Timeout.D().String(), p.Netmask+"/"+p.Netmask6
		}
		for _, sv := range s.Servers {
			g.Servers = append(g.Servers, sv.Address+"*"+itoa(*sv.Weight))
		}
		got = append(got, g)
	}
	want := []svc{
		{"tcp-198-18-0-10-80", "198.18.0.10:80", "tcp", "wlc", "director", 0, "10m0s", "255.255.255.0/128", []string{"198.19.0.11:8080*3", "198.19.0.12:8080*1", "198.19.0.13:8080*0"}},
		{"tcp-198-18-0-10-443", "198.18.0.10:443", "tcp", "mh", "director", 0, "5m0s", "255.255.255.255/128", []string{"198.19.0.11:443*1", "198.19.0.12:443*1"}},
		{"udp-198-18-0-10-53", "198.18.0.10:53", "udp", "rr", "proxy", 0, "", "", []string{"198.19.0.11:53*1", "198.19.0.12:53*1"}},
		{"fwmark-1", "", "", "rr", "director", 1, "30m0s", "255.255.255.255/128", []string{"198.19.0.21*1", "198.19.0.22*1"}},
		{"tcp-2001-db8--10-443", "[2001:db8::10]:443", "tcp", "sh", "director", 0, "5m0s", "255.255.255.255/64", []string{"[2001:db8:1::11]:443*2", "[2001:db8:1::12]:443*1"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
	if len(f.Marks) != 1 || f.Marks[0].Mark != 1 || strings.Join(f.Marks[0].Addresses, ",") != "198.18.0.20" || strings.Join(f.Marks[0].Ports, ",") != "21,10000-10100" {
		t.Errorf("mark class %+v, want mark 1 on 198.18.0.20 ports 21,10000-10100", f.Marks)
	}
	if !f.Services[2].OnePacket {
		t.Error("-o was lost")
	}
	if sv := f.Services[len(f.Services)-1].Servers[0]; sv.MaxConnections != 1000 || sv.ResumeConnections != 0 {
		t.Errorf("-x 1000: %+v", sv)
	}
	for _, want := range []string{
		"line 5: scheduler flags \"mh-fallback,mh-port\" left out: tether's sh and mh always fall back",
		"line 11: fwmark 1: DR forwarding is not supported",
		"line 8: udp 198.18.0.10:53: one-packet scheduling (-o) is the socket proxy's; the service runs in proxy mode",
	} {
		if !strings.Contains(notes(r), want) {
			t.Errorf("notes lack %q:\n%s", want, notes(r))
		}
	}
}

// Lines the importer cannot read are reported with their numbers, and the
// rest is imported.
func TestIPVSAdmBadLines(t *testing.T) {
	in := "-A -t 198.18.0.10:80 -s wlc\n" +
		"-a -t 198.18.0.10:80 -r web1.example.com:http -m\n" + // not saved with -n
		"-a -t 198.18.0.10:81 -r 198.19.0.11:80 -m\n" + // no such service
		"-X -t 198.18.0.10:80\n" +
		"-a -t 198.18.0.10:80 -r 198.19.0.11:80 -m -w lots\n" +
		"-a -t 198.18.0.10:80 -r 198.19.0.11:80 -m -w 1\n" +
		"-A -f 7 -s rr\n-a -f 7 -r 198.19.0.11:0 -m\n"
	r, err := IPVSAdmWith(strings.NewReader(in), nil, fakeResolver(nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`line 2: real server "web1.example.com:http": not an address:port (host "web1.example.com" does not resolve`,
		"line 3: server of tcp 198.18.0.10:81, which no -A rule before it adds",
		`line 4: "-X -t 198.18.0.10:80" is not an ipvsadm -S rule`,
		`line 5: weight "lots" is not 0..65535`,
		"line 7: fwmark-7: the rules that set mark 7 are not in this file",
	} {
		if !strings.Contains(notes(r), want) {
			t.Errorf("notes lack %q:\n%s", want, notes(r))
		}
	}
	if !r.Unreadable() {
		t.Error("Unreadable() is false with unreadable lines")
	}
	if len(r.Config.Services) != 2 || len(r.Config.Services[0].Servers) != 1 {
		t.Errorf("services %+v, want the readable service with its one readable server, and the mark service", r.Config.Services)
	}
}

func TestKeepalived(t *testing.T) {
	r, err := Keepalived(open(t, "keepalived.conf"), open(t, "mangle.rules"))
	if err != nil {
		t.Fatal(err)
	}
	f := roundTrip(t, r, "keepalived")
	if len(f.Services) != 4 {
		t.Fatalf("%d services, want 4:\n%s", len(f.Services), notes(r))
	}
	web := f.Services[0]
	if web.Listen != "198.18.0.10:80" || web.Scheduler != "wrr" || web.Persistence.Timeout.D().Seconds() != 900 || web.Persistence.Netmask != "255.255.255.0" ||
		web.SorryServer != "198.19.0.99:80" || web.Quorum != 2 || !web.InhibitOnFailure || web.Mode != "director" {
		t.Errorf("web: %+v", web)
	}
	if !slices.Equal(web.QuorumUp, []string{"/usr/local/bin/notify", "web", "up"}) || !slices.Equal(web.QuorumDown, []string{"/usr/local/bin/notify-down"}) {
		t.Errorf("web's quorum hooks: up %q, down %q", web.QuorumUp, web.QuorumDown)
	}
	hc := web.Servers[0].HealthCheck
	want := &config.HealthCheck{Type: "http", Interval: config.Duration(6e9), Timeout: config.Duration(3e9), Rise: 1, Fall: 3, Start: "down", Path: "/healthz", ExpectStatus: "200"}
	if diff := cmp.Diff(want, hc); diff != "" {
		t.Errorf("HTTP_GET (-want +got):\n%s", diff)
	}
	if hc := web.Servers[1].HealthCheck; hc.Type != "tcp" || hc.Port != 8080 || hc.Start != "down" || *web.Servers[0].Weight != 2 {
		t.Errorf("TCP_CHECK %+v", hc)
	}
	ftp := f.Services[1]
	if ftp.Fwmark != 1 || ftp.Servers[0].Address != "198.19.0.21" || ftp.Servers[0].HealthCheck.Port != 21 ||
		strings.Join(ftp.Servers[1].HealthCheck.Command, " ") != "/usr/local/bin/check_ftp 198.19.0.22" || f.Marks[0].Ports[0] != "21" {
		t.Errorf("fwmark 1: %+v, marks %+v", ftp, f.Marks)
	}
	v6 := f.Services[2]
	if v6.Listen != "[2001:db8::10]:443" || v6.Persistence.Netmask6 != "64" {
		t.Errorf("v6: %+v", v6)
	}
	if hc := v6.Servers[0].HealthCheck; hc == nil || hc.Type != "https" || hc.Path != "/" || hc.Digest != "9b3a0c85a887a256d6939da88aabd8cd" || hc.VerifyTLS {
		t.Errorf("SSL_GET: %+v", hc)
	}
	if dns := f.Services[3]; dns.Protocol != "udp" || dns.Scheduler != "wlc" {
		t.Errorf("udp: %+v", dns)
	}
	for _, want := range []string{
		"line 3: global_defs skipped",
		"line 7: vrrp_instance skipped",
		"line 56: fwmark 1: DR forwarding is not supported",
		`scheduler "lblc" is not one of tether's`,
	} {
		if !strings.Contains(notes(r), strings.Replace(want, "2001:db8:1::11 443", "[2001:db8:1::11]:443", 1)) {
			t.Errorf("notes lack %q:\n%s", want, notes(r))
		}
	}
}

func TestKeepalivedSyntaxErrors(t *testing.T) {
	for in, want := range map[string]string{
		"virtual_server 198.18.0.10 80 {\n  lb_algo rr\n": "line 1: the block opened here is never closed",
		"}\n":   "line 1: } without a { before it",
		"\n{\n": "line 2: { without a statement before it",
	} {
		if _, err := Keepalived(strings.NewReader(in), nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// fakeResolver knows the hosts and service names given, and nothing else:
// tests never ask the network.
func fakeResolver(hosts map[string][]netip.Addr, ports map[string]int) Resolver {
	return Resolver{
		Host: func(_ context.Context, h string) ([]netip.Addr, error) {
			if a, ok := hosts[h]; ok {
				return a, nil
			}
			return nil, fmt.Errorf("no such host %s", h)
		},
		Port: func(_ context.Context, network, s string) (int, error) {
			if p, ok := ports[network+"/"+s]; ok {
				return p, nil
			}
			return 0, fmt.Errorf("unknown port %s/%s", network, s)
		},
	}
}

// ipvsadm -S without -n, its default, writes host and service names:
// they are resolved, each noted with what it became; a host with two
// addresses gives its IPv4 one.
func TestIPVSAdmNames(t *testing.T) {
	in := "-A -t lb.example.com:http -s rr -p 600\n" +
		"-a -t lb.example.com:http -r web1:http-alt -m -w 2\n" +
		"-a -t lb.example.com:http -r web2:8080 -m\n" +
		"-A -u lb.example.com:domain -s rr\n" +
		"-a -u lb.example.com:domain -r 198.19.0.53:domain -m\n"
	ap := netip.MustParseAddr
	res := fakeResolver(map[string][]netip.Addr{
		"lb.example.com": {ap("198.18.0.10")},
		"web1":           {ap("198.19.0.11")},
		"web2":           {ap("2001:2::12"), ap("198.19.0.12")},
	}, map[string]int{"tcp/http": 80, "tcp/http-alt": 8080, "udp/domain": 53})
	r, err := IPVSAdmWith(strings.NewReader(in), nil, res)
	if err != nil {
		t.Fatal(err)
	}
	if r.Unreadable() {
		t.Fatalf("unreadable lines:\n%s", notes(r))
	}
	f := roundTrip(t, r, "ipvsadm names")
	type svc struct {
		listen, proto string
		servers       []string
	}
	var got []svc
	for _, s := range f.Services {
		g := svc{s.Listen, string(s.Protocol), nil}
		for _, sv := range s.Servers {
			g.servers = append(g.servers, sv.Address)
		}
		got = append(got, g)
	}
	want := []svc{
		{"198.18.0.10:80", "tcp", []string{"198.19.0.11:8080", "198.19.0.12:8080"}},
		{"198.18.0.10:53", "udp", []string{"198.19.0.53:53"}},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(svc{})); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
	if n := strings.Count(notes(r), "lb.example.com:http:"); n != 1 {
		t.Errorf("lb.example.com:http noted %d times, want once:\n%s", n, notes(r))
	}
	for _, note := range []string{
		"line 1: lb.example.com:http: host lb.example.com is 198.18.0.10, port http is 80",
		"line 2: web1:http-alt: host web1 is 198.19.0.11, port http-alt is 8080",
		"line 3: web2:8080: host web2 is 198.19.0.12 (of its 2 addresses)",
		"line 4: lb.example.com:domain: host lb.example.com is 198.18.0.10, port domain is 53",
		"line 5: 198.19.0.53:domain: port domain is 53",
	} {
		if !strings.Contains(notes(r), note) {
			t.Errorf("notes lack %q:\n%s", note, notes(r))
		}
	}
}

// Port-0 services (every port of the VIP, persistent, as ipvsadm -A -t
// VIP:0 -p and keepalived's virtual_server VIP 0) import with their servers
// on port 0 (the client's port); tether check turns each into a mark
// class over the VIP's ports of its protocol, UDP too. Both importers
// refused them.
func TestImportPortZero(t *testing.T) {
	ipvs := "-A -t 198.18.0.10:0 -s rr -p 300\n-a -t 198.18.0.10:0 -r 198.19.0.11:0 -m\n-a -t 198.18.0.10:0 -r 198.19.0.12:0 -m\n" +
		"-A -u 198.18.0.10:0 -s rr -p 300\n-a -u 198.18.0.10:0 -r 198.19.0.11:0 -m\n"
	r, err := IPVSAdmWith(strings.NewReader(ipvs), nil, Resolver{})
	if err != nil || r.Unreadable() {
		t.Fatalf("ipvsadm: %v\n%s", err, notes(r))
	}
	f := roundTrip(t, r, "ipvsadm port 0")
	if len(f.Marks) != 2 || f.Marks[0].Protocol != "tcp" || f.Marks[1].Protocol != "udp" || f.Services[0].Fwmark == 0 || f.Services[0].Servers[0].Address != "198.19.0.11" {
		t.Errorf("ipvsadm port 0: marks %+v, services %+v", f.Marks, f.Services)
	}
	ka := "virtual_server 198.18.0.10 0 {\n  lb_algo rr\n  lb_kind NAT\n  persistence_timeout 300\n  protocol TCP\n  real_server 198.19.0.11 0 {\n    weight 1\n  }\n}\n"
	r, err = Keepalived(strings.NewReader(ka), nil)
	if err != nil || r.Unreadable() {
		t.Fatalf("keepalived: %v\n%s", err, notes(r))
	}
	f = roundTrip(t, r, "keepalived port 0")
	if len(f.Marks) != 1 || f.Services[0].Servers[0].Address != "198.19.0.11" {
		t.Errorf("keepalived port 0: marks %+v, services %+v", f.Marks, f.Services)
	}
}

// SSL_GET is an https check: virtualhost is the Host header and, with
// enable_sni, the TLS server name; url digest is the body's MD5.
func TestKeepalivedSSLGet(t *testing.T) {
	in := "virtual_server 198.18.0.10 443 {\n  real_server 198.19.0.1 443 {\n    SSL_GET {\n      virtualhost shop.example\n      enable_sni\n" +
		"      url {\n        path /health\n        digest 9b3a0c85a887a256d6939da88aabd8cd\n      }\n    }\n  }\n}\n"
	r, err := Keepalived(strings.NewReader(in), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := roundTrip(t, r, "keepalived")
	want := &config.HealthCheck{Type: "https", Path: "/health", Host: "shop.example", SNI: "shop.example", Digest: "9b3a0c85a887a256d6939da88aabd8cd"}
	got := f.Services[0].Servers[0].HealthCheck
	if got == nil || got.Type != want.Type || got.Path != want.Path || got.Host != want.Host || got.SNI != want.SNI || got.Digest != want.Digest {
		t.Errorf("SSL_GET became %+v, want %+v\n%s", got, want, notes(r))
	}
}

// SMTP_CHECK and DNS_CHECK become smtp and dns checks.
func TestKeepalivedSMTPAndDNSChecks(t *testing.T) {
	in := "virtual_server 198.18.0.10 25 {\n  real_server 198.19.0.1 25 {\n    SMTP_CHECK {\n      helo_name lb.example\n      retry 2\n    }\n  }\n}\n" +
		"virtual_server 198.18.0.10 53 {\n  protocol UDP\n  real_server 198.19.0.1 53 {\n    DNS_CHECK {\n      type A\n      name www.example\n    }\n  }\n}\n"
	r, err := Keepalived(strings.NewReader(in), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := roundTrip(t, r, "keepalived")
	smtp, dns := f.Services[0].Servers[0].HealthCheck, f.Services[1].Servers[0].HealthCheck
	if smtp == nil || smtp.Type != "smtp" || smtp.Helo != "lb.example" || smtp.Fall != 3 {
		t.Errorf("SMTP_CHECK became %+v\n%s", smtp, notes(r))
	}
	if dns == nil || dns.Type != "dns" || dns.QueryType != "A" || dns.QueryName != "www.example" {
		t.Errorf("DNS_CHECK became %+v\n%s", dns, notes(r))
	}
}

// uthreshold and lthreshold are a server's max_connections and
// resume_connections.
func TestKeepalivedThresholds(t *testing.T) {
	in := "virtual_server 198.18.0.10 80 {\n  real_server 198.19.0.1 80 {\n    uthreshold 100\n    lthreshold 60\n  }\n" +
		"  real_server 198.19.0.2 80 {\n    lthreshold 60\n  }\n}\n"
	r, err := Keepalived(strings.NewReader(in), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := roundTrip(t, r, "keepalived")
	if a, b := f.Services[0].Servers[0], f.Services[0].Servers[1]; a.MaxConnections != 100 || a.ResumeConnections != 60 || b.ResumeConnections != 0 {
		t.Errorf("thresholds: %+v, %+v", a, b)
	}
	if !strings.Contains(notes(r), "line 6: virtual_server 198.18.0.10:80: real_server 198.19.0.2:80: lthreshold without a larger uthreshold") {
		t.Errorf("notes: %s", notes(r))
	}
}
