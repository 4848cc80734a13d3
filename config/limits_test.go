package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Values tether used to coerce silently are errors with file:line.
func TestValuesAreCheckedNotCoerced(t *testing.T) {
	svc := func(extra, server string) string {
		return "services:\n  - name: web\n    listen: 127.0.0.1:8080\n" + extra + "    servers:\n      - address: 127.0.0.2:80\n" + server
	}
	bomb := "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n" +
		"d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n" + svc("", "")
	for _, tc := range []struct{ name, in, want string }{
		// 18446744074 s used to wrap to 290 ms.
		{"timeout past int64", svc("    persistence: {timeout: 18446744074}\n", ""), "cfg.yaml:4: 18446744074 seconds is out of range"},
		{"timeout past Duration", svc("    persistence: {timeout: 9223372037}\n", ""), "9223372037 seconds is out of range"},
		{"timeout of a year", svc("    persistence: {timeout: 8760h}\n", ""), "services[0].persistence.timeout: 8760h0m0s is longer than the 248 days a template can wait"},
		{"negative client limit", svc("    persistence: {max_client_connections: -1}\n", ""), "services[0].persistence.max_client_connections: -1 is not between 0 (no limit) and 4294967295"},
		// 1.9 used to become 1, -0.5 to become 0.
		{"fractional weight", svc("", "        weight: 1.9\n"), "cfg.yaml:6: services[0].servers[0].weight: 1.9 is not a whole number"},
		{"negative fractional weight", svc("", "        weight: -0.5\n"), "services[0].servers[0].weight: -0.5 is not a whole number"},
		{"fractional limit", svc("    limits: {max_connections: 2.5}\n", ""), "services[0].limits.max_connections: 2.5 is not a whole number"},
		// 1ns used to be accepted and burn a core.
		{"snapshot every 10ms", "snapshot: /tmp/s\nsnapshot_interval: 10ms\n" + svc("", ""), "cfg.yaml:2: snapshot_interval: 10ms is shorter than 100ms"},
		{"bad allow prefix", svc("    allow: [10.0.0.0/33]\n", ""), `cfg.yaml:4: services[0].allow: "10.0.0.0/33" is not an address or a prefix`},
		{"send_proxy v3", svc("    send_proxy: v3\n", ""), `services[0].send_proxy: "v3" is not v1 or v2`},
		{"send_proxy on udp", "services:\n  - {name: d, protocol: udp, listen: 127.0.0.1:53, send_proxy: v2, servers: [{address: 127.0.0.2:53}]}\n", "services[0].send_proxy: is for TCP services"},
		{"send_proxy in the director", "services:\n  - {name: d, mode: director, listen: 127.0.0.1:80, servers: [{address: 127.0.0.2:80, send_proxy: v1}]}\n", "services[0].servers[0].send_proxy: is for the socket proxy"},
		{"accept_proxy on udp", "services:\n  - {name: d, protocol: udp, listen: 127.0.0.1:53, accept_proxy: [10.0.0.1], servers: [{address: 127.0.0.2:53}]}\n", "services[0].accept_proxy: is for TCP services in the socket proxy"},
		{"bad digest", svc("    health_check: {type: https, digest: xyz}\n", ""), `services[0].health_check.digest: "xyz" is not an MD5 digest (32 hex digits)`},
		{"sni on http", svc("    health_check: {type: http, sni: a.example}\n", ""), "services[0].health_check.sni: is for https checks, and this one is http"},
		{"bad query_type", svc("    health_check: {type: dns, query_type: QQ}\n", ""), `services[0].health_check.query_type: "QQ" is not a DNS record type`},
		{"helo on tcp", svc("    health_check: {type: tcp, helo: x}\n", ""), "services[0].health_check.helo: is for smtp checks, and this one is tcp"},
		{"resume above max", svc("", "        max_connections: 10\n        resume_connections: 20\n"), "services[0].servers[0].resume_connections: 20 is above max_connections 10"},
		{"resume without max", svc("", "        resume_connections: 20\n"), "services[0].servers[0].resume_connections: needs max_connections"},
		{"check interval 1ns", svc("    health_check: {type: tcp, interval: 1ns}\n", ""), "services[0].health_check.interval: 1ns is shorter than 10ms"},
		// A second document used to be ignored.
		{"second document", svc("", "") + "---\nservices: []\n", "cfg.yaml:6: a second YAML document"},
		{"alias bomb", bomb, "more than 200000 values with its aliases expanded"},
		{"deep nesting", strings.Repeat("[", 40) + strings.Repeat("]", 40) + "\n", "nested more than 32 levels deep"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("cfg.yaml", []byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	// An alias that expands to little is fine: anchors are a YAML feature.
	ok := "x: &servers [{address: 127.0.0.2:80}]\n"
	if _, err := Parse("cfg.yaml", []byte(ok+"services:\n  - {name: a, listen: 127.0.0.1:1, servers: *servers}\n")); err == nil || !strings.Contains(err.Error(), "field x not found") {
		t.Errorf("a small alias: %v, want only the unknown key x", err)
	}
}

// The config loader checks what it opens before reading it: a FIFO used to
// block it forever, /dev/zero to take all memory.
func TestLoadRefusesWhatIsNotAConfigFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, MaxFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{fifo, "is a FIFO, not a regular file"},
		{"/dev/zero", "is a character device, not a regular file"},
		{big, "more than the 4194304 this file may have"},
	} {
		done := make(chan error, 1)
		go func() { _, err := Load(tc.path); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load(%s): %v, want an error containing %q", tc.path, err, tc.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Load(%s) has not returned after 10s: it reads without a bound", tc.path)
		}
	}
}

// Error unwraps to the error its message was made from.
func TestErrorUnwraps(t *testing.T) {
	_, err := Parse("cfg.yaml", []byte("services:\n  - name: web\n    listen: 127.0.0.1:80\n    persistence: {netmask: 255.0.255.0}\n    servers: [{address: 127.0.0.2:80}]\n"))
	var es Errors
	if !errors.As(err, &es) || len(es) != 1 || es[0].Unwrap() == nil {
		t.Fatalf("err = %v, want one Error with a cause", err)
	}
}

// RestartNeeded names exactly the changed settings a reload cannot apply.
func TestRestartNeeded(t *testing.T) {
	base := "services:\n  - {name: web, listen: 127.0.0.1:80, servers: [{address: 127.0.0.2:80}]}\n"
	dir := "mode: director\n"
	for _, tc := range []struct {
		name, a, b string
		want       []string
	}{
		{"nothing", base, base, nil},
		{"servers only", base, strings.Replace(base, "127.0.0.2:80", "127.0.0.3:80", 1), nil},
		{"capacity and admin", base, "affinity: {capacity: 1000}\nadmin: {socket: off}\n" + base, []string{"admin", "affinity.capacity"}},
		{"log and metrics", base, "log: {level: debug}\nmetrics: {enabled: true}\n" + base, []string{"log", "metrics"}},
		{"director queues", dir + base, dir + "director: {queues: 2, fail_open: true}\n" + base, []string{"director.queues", "director.fail_open"}},
		{"a first director service", base, dir + "director: {queues: 2}\n" + base, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := Parse("a.yaml", []byte(tc.a))
			if err != nil {
				t.Fatal(err)
			}
			b, err := Parse("b.yaml", []byte(tc.b))
			if err != nil {
				t.Fatal(err)
			}
			got := RestartNeeded(a, b)
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("RestartNeeded = %v, want %v", got, tc.want)
			}
		})
	}
}

// A persistent port-0 UDP service becomes a mark service over every UDP
// port of its VIP, as a TCP one does over TCP; a TCP service on a port of
// the same VIP is left out of the TCP class only. tether check used to
// refuse the UDP one ("a mark service takes its protocols from its class").
func TestPortZeroUDP(t *testing.T) {
	in := "services:\n" +
		"  - {name: all-tcp, listen: 198.18.0.10:0, persistence: {}, servers: [{address: 198.19.0.11}]}\n" +
		"  - {name: all-udp, protocol: udp, listen: 198.18.0.10:0, persistence: {}, servers: [{address: 198.19.0.11}]}\n" +
		"  - {name: web, listen: 198.18.0.10:80, servers: [{address: 198.19.0.11:8080}]}\n"
	f, err := Parse("p0.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Marks) != 2 {
		t.Fatalf("marks %+v", f.Marks)
	}
	tcp, udp := f.Marks[0], f.Marks[1]
	if tcp.Protocol != "tcp" || strings.Join(tcp.Ports, ",") != "1-79,81-65535" {
		t.Errorf("tcp class %+v: want every TCP port but 80", tcp)
	}
	if udp.Protocol != "udp" || strings.Join(udp.Ports, ",") != "1-65535" {
		t.Errorf("udp class %+v: want every UDP port", udp)
	}
	if s := f.Services[1]; s.Fwmark != udp.Mark || s.Protocol != "" || s.Listen != "" {
		t.Errorf("the UDP port-0 service %+v: want the mark service of its class", s)
	}
}
