package main

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
)

// run runs the CLI with args and returns what it printed and its error.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = newApp(&o, &e).Run(append([]string{"tether"}, args...))
	return o.String(), e.String(), err
}

func TestVersion(t *testing.T) {
	out, _, err := runCLI(t, "version")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tether dev", "commit unknown", runtime.Version()} {
		if !strings.Contains(out, want) {
			t.Errorf("version output %q lacks %q", out, want)
		}
	}
}

func TestHelpListsCommands(t *testing.T) {
	out, _, err := runCLI(t, "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"version", "--log-format", "--log-level"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q:\n%s", want, out)
		}
	}
}

func TestLogFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"--log-format", "json", "--log-level", "debug", "version"}, ""},
		{[]string{"--log-format", "xml", "version"}, `--log-format "xml": want text or json`},
		{[]string{"--log-level", "loud", "version"}, `--log-level "loud"`},
	} {
		_, _, err := runCLI(t, tc.args...)
		if tc.err == "" && err != nil {
			t.Errorf("%v: %v", tc.args, err)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.err)
		}
	}
}

func TestLoggerFormats(t *testing.T) {
	var b bytes.Buffer
	l, err := newLogger(&b, "json", "warn")
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hidden")
	l.Warn("shown", "k", 1)
	if s := b.String(); strings.Contains(s, "hidden") || !strings.Contains(s, `"msg":"shown"`) || !strings.Contains(s, `"k":1`) {
		t.Errorf("json warn logger wrote %q", s)
	}
}
