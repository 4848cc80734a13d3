package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The realistic rule files of package migrate, imported through the CLI
// and checked with tether check: the round trip an operator makes.
func TestImportRoundTripsThroughCheck(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join("..", "..", "migrate", "testdata")
	for _, tc := range []struct {
		name    string
		proxied int // services in proxy mode; -1: all
		args    []string
	}{
		{"ipvsadm", 1, []string{"import", "ipvsadm", "--iptables", filepath.Join(data, "mangle.rules"), filepath.Join(data, "ipvsadm.rules")}},
		{"keepalived", 0, []string{"import", "keepalived", "--iptables", filepath.Join(data, "mangle.rules"), filepath.Join(data, "keepalived.conf")}},
		{"proxy", -1, []string{"import", "ipvsadm", "--mode", "proxy", "--iptables", filepath.Join(data, "mangle.rules"), filepath.Join(data, "ipvsadm.rules")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := runCLI(t, tc.args...)
			if err != nil {
				t.Fatalf("%v: %v\n%s", tc.args, err, errOut)
			}
			if !strings.Contains(errOut, "DR forwarding is not supported") {
				t.Errorf("no DR warning on stderr:\n%s", errOut)
			}
			path := filepath.Join(dir, tc.name+".yaml")
			os.WriteFile(path, []byte(out), 0o600)
			checked, _, err := runCLI(t, "check", "--config", path)
			if err != nil {
				t.Fatalf("tether check refuses the import: %v\n%s", err, out)
			}
			// The -o service runs in the socket proxy (one-packet
			// scheduling is its); the rest as IPVS's NAT, the director.
			want := tc.proxied
			if want < 0 {
				want = strings.Count(checked, "    mode: ")
			}
			if got := strings.Count(checked, "    mode: proxy"); got != want {
				t.Errorf("%d services in proxy mode, want %d:\n%s", got, want, checked)
			}
		})
	}
}

// Without the MARK rules a mark service has no class: the config is
// printed anyway and the exit status says it does not pass check yet.
func TestImportFromStdinWithoutMarkRules(t *testing.T) {
	var o, e bytes.Buffer
	app := newApp(&o, &e)
	app.Reader = strings.NewReader("-A -f 1 -s rr -p 300\n-a -f 1 -r 198.19.0.21:0 -m -w 1\n-A -t 198.18.0.10:80\n-a -t 198.18.0.10:80 -r bad..name:http -m\n") // not a valid host name: refused before any lookup
	err := app.Run([]string{"tether", "import", "ipvsadm"})
	if err == nil || !strings.Contains(err.Error(), "does not pass tether check yet") || !strings.Contains(err.Error(), `class "fwmark-1": no destination addresses`) {
		t.Errorf("err = %v", err)
	}
	if !strings.Contains(o.String(), "fwmark: 1") || !strings.Contains(e.String(), `stdin: line 4: real server "bad..name:http": not an address:port (host "bad..name" does not resolve`) {
		t.Errorf("stdout:\n%s\nstderr:\n%s", o.String(), e.String())
	}
}
