package migrate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// include as keepalived resolves it: a glob relative to the directory of
// the including file, at the top level and inside a block; notes name the
// included file and its line.
func TestKeepalivedInclude(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"keepalived.conf":   "global_defs {\n}\ninclude conf.d/*.conf\ninclude none/*.conf\n",
		"conf.d/a-web.conf": "virtual_server 198.18.0.10 80 {\n  lb_algo rr\n  include ../real/web-*.conf\n}\n",
		"conf.d/b-dns.conf": "virtual_server 198.18.0.53 53 {\n  protocol UDP\n  lb_algo lblc\n  real_server 198.19.0.53 53 {\n  }\n}\n",
		"real/web-1.conf":   "real_server 198.19.0.1 80 {\n}\n",
		"real/web-2.conf":   "real_server 198.19.0.2 80 {\n}\n",
	})
	r, err := KeepalivedFile(filepath.Join(dir, "keepalived.conf"), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := roundTrip(t, r, "keepalived")
	if len(f.Services) != 2 {
		t.Fatalf("%d services, want 2:\n%s", len(f.Services), notes(r))
	}
	web, dns := f.Services[0], f.Services[1]
	if web.Listen != "198.18.0.10:80" || len(web.Servers) != 2 || web.Servers[0].Address != "198.19.0.1:80" || web.Servers[1].Address != "198.19.0.2:80" {
		t.Errorf("web from conf.d/a-web.conf and real/web-*.conf: %+v", web)
	}
	if dns.Listen != "198.18.0.53:53" || dns.Protocol != "udp" {
		t.Errorf("dns from conf.d/b-dns.conf: %+v", dns)
	}
	all := notes(r)
	for _, want := range []string{
		filepath.Join(dir, "conf.d/b-dns.conf") + ":3: ", // lblc is not tether's
		"line 4: include none/*.conf: no file matches",
		"line 1: global_defs skipped",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("notes lack %q:\n%s", want, all)
		}
	}
}

// An include loop ends with an error naming where, and a stream (stdin)
// notes its includes instead of following them.
func TestKeepalivedIncludeBounds(t *testing.T) {
	dir := writeFiles(t, map[string]string{"keepalived.conf": "include keepalived.conf\n"})
	_, err := KeepalivedFile(filepath.Join(dir, "keepalived.conf"), nil)
	if err == nil || !strings.Contains(err.Error(), "includes nested more than 8 deep") || !strings.Contains(err.Error(), "keepalived.conf:1") {
		t.Errorf("include loop: %v", err)
	}
	r, err := Keepalived(strings.NewReader("include conf.d/*.conf\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if all := notes(r); !strings.Contains(all, "line 1: include conf.d/*.conf skipped: includes are followed when importing from a file") {
		t.Errorf("notes: %s", all)
	}
}
