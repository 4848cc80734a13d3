package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/tetherlb/tether/testenv"
)

// A peer is a load balancer tether's users run today, configured for the
// same persistence as tether's socket proxy in the namespace table: the
// client's address picks the server and keeps it.
type peer struct {
	name, bin string
	// config renders the peer's configuration listening on vip for
	// server, with dir for its files.
	config func(dir, vip, server string) (file string, args []string)
	// rules, when set, are nftables rules loaded in the load-balancer
	// host while the peer runs (nft syntax; each table they add is
	// deleted after).
	rules func(dir, vip, server string) (string, error)
	// env is added to the peer's environment.
	env []string
	// afterUp, when set, runs once the peer answers, with its pid; the
	// cleanup it returns runs after the measurement.
	afterUp func(pid int) (cleanup func(), err error)
}

var peers = []peer{
	{name: "HAProxy", bin: "haproxy", config: func(dir, vip, server string) (string, []string) {
		return haproxyConfig(dir, vip, server)
	}},
	{name: "nginx stream", bin: "nginx", config: func(dir, vip, server string) (string, []string) {
		f := filepath.Join(dir, "nginx.conf")
		os.WriteFile(f, []byte(nginxConfig(dir, server, vip)), 0o600)
		return f, []string{"-p", dir, "-c", f}
	}},
}

// nginxConfig is nginx stream's configuration for the benchmark: one
// worker on listen (an address and listen options) to server, the
// client's address picking the server, with dir for its files.
func nginxConfig(dir, server, listen string) string {
	return fmt.Sprintf(`load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process off;
worker_processes 1;
pid %s/nginx.pid;
error_log stderr error;
events { worker_connections 20000; }
stream {
  upstream bench { hash $remote_addr consistent; server %s; }
  server { listen %s; proxy_pass bench; }
}
`, dir, server, listen)
}

// haproxyConfig is HAProxy's configuration for the benchmark: bind (an
// address and bind options) to server, with one stick table keyed by
// source, HAProxy's persistence.
func haproxyConfig(dir, bind, server string) (string, []string) {
	f := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(f, []byte(fmt.Sprintf(`global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1m
  timeout server 1m
  option splice-auto
listen bench
  bind %s
  stick-table type ip size 1m expire 300s
  stick on src
  server s1 %s
`, bind, server)), 0o600)
	return f, []string{"-db", "-f", f}
}

// measurePeer runs p in the load-balancer host on vip, waits until dial
// reaches it, measures it with measure, and returns the column with its peak RSS; an error
// when p is not installed or does not come up.
func measurePeer(env *testenv.Env, p peer, vip, server string, dial dialer, measure func(time.Duration, int) (result, error), dur time.Duration) (column, error) {
	bin, err := exec.LookPath(p.bin)
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/" + p.bin); err != nil {
			return column{}, fmt.Errorf("%s is not installed", p.bin)
		}
	}
	dir, err := os.MkdirTemp("", "tetherbench-peer")
	if err != nil {
		return column{}, err
	}
	defer os.RemoveAll(dir)
	_, args := p.config(dir, vip, server)
	if p.rules != nil {
		rules, err := p.rules(dir, vip, server)
		if err == nil {
			err = nftIn(env.LB, rules)
		}
		if err != nil {
			return column{}, fmt.Errorf("%s: rules: %w", p.name, err)
		}
		defer func() {
			for _, t := range regexp.MustCompile(`(?m)^table (\w+ \w+)`).FindAllStringSubmatch(rules, -1) {
				nftIn(env.LB, "delete table "+t[1]+"\n")
			}
		}()
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), p.env...)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := env.LB.Start(cmd); err != nil {
		return column{}, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	up := false
	for deadline := time.Now().Add(5 * time.Second); !up && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := dial(0, 0); err == nil {
			c.Close()
			up = true
		}
	}
	if !up {
		return column{}, fmt.Errorf("%s did not come up: %s", p.name, stderr.String())
	}
	if p.afterUp != nil {
		cleanup, err := p.afterUp(cmd.Process.Pid)
		if err != nil {
			return column{}, fmt.Errorf("%s: %w", p.name, err)
		}
		defer cleanup()
	}
	r, err := measure(dur, cmd.Process.Pid)
	if err != nil {
		return column{}, fmt.Errorf("%s: %w", p.name, err)
	}
	mem, _ := readMemory(cmd.Process.Pid)
	return column{p.name, r, mem}, nil
}

// tetherPeers are tether itself run as its own process in the
// load-balancer host, as the peers are, so that its peak RSS is measured
// the same way: the director (with its kernel template map) and the
// socket proxy. bin is the tether binary the benchmark built.
func tetherPeers(bin string) []peer {
	conf := func(mode, director string) func(dir, vip, server string) (string, []string) {
		return func(dir, vip, server string) (string, []string) {
			f := filepath.Join(dir, "tether.yaml")
			os.WriteFile(f, []byte(fmt.Sprintf(`mode: %s
director: {%s}
admin: {socket: %s/admin.sock}
services:
  - name: bench
    listen: %s
    persistence: {timeout: 300s}
    servers: [{address: %s}]
`, mode, director, dir, vip, server)), 0o600)
			return f, []string{"--log-level", "warn", "run", "--config", f}
		}
	}
	loops := func(n string, f func(dir, vip, server string) (string, []string)) func(dir, vip, server string) (string, []string) {
		return func(dir, vip, server string) (string, []string) {
			file, args := f(dir, vip, server)
			return file, append(args, "--tcp-loops", n)
		}
	}
	// The socket proxy on its event loops (one per CPU, and one), and with
	// a goroutine per connection, for the loops' lever; the same VIP:port
	// as a firewall-mark service, on its own listener (the VIP is local:
	// tproxy auto) and through TPROXY, and HAProxy behind the very rules
	// the TPROXYed service makes (tether nft show), on a transparent
	// listener: the same kernel work per packet.
	markConfWith := func(tproxy string) func(dir, vip, server string) (string, []string) {
		return func(dir, vip, server string) (string, []string) {
			return markConfig(dir, vip, server, tproxy)
		}
	}
	markConf, markTProxy := markConfWith("auto"), markConfWith("always")
	haproxyTProxy := peer{name: "HAProxy, TPROXY", bin: "haproxy", config: func(dir, vip, server string) (string, []string) {
		return haproxyConfig(dir, "0.0.0.0:20080 transparent", server)
	}, rules: func(dir, vip, server string) (string, error) {
		f, _ := markTProxy(dir, vip, server)
		out, err := exec.Command(bin, "nft", "show", "--config", f).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("tether nft show: %w: %s", err, out)
		}
		return string(out), nil
	}}
	return []peer{
		{"tether director (process)", bin, conf("director", "queues: 2"), nil, nil, nil},
		// Without the kernel template maps: every flow queued, and no map
		// writes; what the maps cost new clients and gain returning ones.
		{"director, no kernel templates (process)", bin, conf("director", "queues: 2, kernel_templates: false"), nil, nil, nil},
		// The queues by the CPU that took the packet instead of by flow
		// hash: the director issue's fanout lever for new clients.
		{"director, cpu fanout (process)", bin, conf("director", "queues: 2, cpu_fanout: true"), nil, nil, nil},
		{"tether socket proxy (process)", bin, conf("proxy", ""), nil, nil, nil},
		{"socket proxy, 1 loop", bin, loops("1", conf("proxy", "")), nil, nil, nil},
		{"socket proxy, goroutines", bin, loops("-1", conf("proxy", "")), nil, nil, nil},
		{"socket proxy, GOGC=100", bin, conf("proxy", ""), nil, []string{"GOGC=100"}, nil}, // Go's default; tether run's is 25
		{"tether mark service (process)", bin, markConf, nil, nil, nil},
		{"mark service, TPROXY (process)", bin, markTProxy, nil, nil, nil},
		// The director's rules with no tether behind them: fail_open
		// tables outlive a SIGKILLed tether, returning clients go by the
		// kernel template map, new ones by the kernel's hash. What the
		// ruleset itself costs, against the static DNAT rule.
		{"director rules, tether killed", bin, conf("director", "queues: 2, fail_open: true"), nil, nil, nil},
		haproxyTProxy,
	}
}

// markConfig writes the mark service's configuration: one class over the
// VIP's port; tproxy is auto or always.
func markConfig(dir, vip, server, tproxy string) (string, []string) {
	v := netip.MustParseAddrPort(vip)
	f := filepath.Join(dir, "tether.yaml")
	os.WriteFile(f, []byte(fmt.Sprintf(`tproxy_port: 20080
tproxy: %s
admin: {socket: %s/admin.sock}
marks:
  - {name: bench, mark: 0x100, protocol: tcp, addresses: [%s], ports: [%d]}
services:
  - name: bench
    fwmark: 0x100
    persistence: {timeout: 300s}
    servers: [{address: %s}]
`, tproxy, dir, v.Addr(), v.Port(), server)), 0o600)
	return f, []string{"--log-level", "warn", "run", "--config", f}
}
