package migrate

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/tetherlb/tether/config"
)

// FuzzIPVSAdm: any input gives a result or an error, never a panic; every
// note names a line of the input; the rendered config is YAML that
// tether's parser reads back (valid, or refused with errors).
func FuzzIPVSAdm(f *testing.F) {
	for _, s := range []string{
		"-A -t 198.18.0.10:80 -s wlc -p 300 -M 255.255.255.0\n-a -t 198.18.0.10:80 -r 198.19.0.11:80 -m -w 1\n",
		"-A -f 1 -s rr -p\n-a -f 1 -r 198.19.0.21:0 -g\n",
		"-A -u [2001:db8::1]:53 -s mh -o -b flag-1\n-a -u [2001:db8::1]:53 -r [2001:db8::2]:53 -m -w 65535 -x 5 -y 2\n",
		"-A -t 1.2.3.4:0 -p 60\n-a -t 1.2.3.4:0 -r 5.6.7.8:0 -i\n-a",
	} {
		f.Add(s)
	}
	if b, err := os.ReadFile("testdata/ipvsadm.rules"); err == nil {
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, in string) {
		r, err := IPVSAdmWith(strings.NewReader(in), strings.NewReader(in), Resolver{}) // no lookups while fuzzing
		if err != nil {
			return
		}
		checkResult(t, r, in)
	})
}

// FuzzKeepalived: the same for keepalived.conf.
func FuzzKeepalived(f *testing.F) {
	if b, err := os.ReadFile("testdata/keepalived.conf"); err == nil {
		f.Add(string(b))
	}
	f.Add("virtual_server fwmark 7 { real_server 1.2.3.4 { TCP_CHECK { connect_port 80 } } }\n")
	f.Add("virtual_server 1.2.3.4 80 {\n quorum 9\n real_server 5.6.7.8 80 { weight x }\n}\n")
	f.Fuzz(func(t *testing.T, in string) {
		r, err := Keepalived(strings.NewReader(in), nil)
		if err != nil {
			return
		}
		checkResult(t, r, in)
	})
}

func checkResult(t *testing.T, r *Result, in string) {
	lines := strings.Count(in, "\n") + 1
	for _, n := range r.Notes {
		if n.Line < 0 || n.Line > lines {
			t.Fatalf("note %q names line %d of %d", n, n.Line, lines)
		}
	}
	out, err := r.YAML("fuzz")
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	if _, err := config.Parse("fuzz.yaml", out); err != nil {
		// Validation errors name a key; the YAML reader's do not, and
		// would mean the importer wrote something tether cannot read.
		var es config.Errors
		if !errors.As(err, &es) {
			t.Fatalf("unexpected error: %v", err)
		}
		for _, e := range es {
			if e.Key == "" {
				t.Fatalf("the rendered config is not YAML tether reads: %v\n%s", e, out)
			}
		}
	}
	if !bytes.HasPrefix(out, []byte("# imported by tether from fuzz\n")) {
		t.Fatalf("rendered without its header:\n%s", out)
	}
}
