package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode) // past the umask
		return p
	}
	good := write("good", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n", 0o600)
	if k, err := ReadKeyFile(good); err != nil || string(k) != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("good key: %q, %v", k, err)
	}
	for name, c := range map[string]struct {
		text string
		mode os.FileMode
		want string
	}{
		"readable": {"MDEyMzQ1Njc4OWFiY2RlZg==", 0o644, "mode 0644); chmod 600"},
		"base64":   {"not a key!", 0o600, "not base64"},
		"length":   {"MDEyMzQ1Njc4OQ==", 0o600, "a key of 10 bytes"},
		"empty":    {"", 0o600, "EOF"},
	} {
		_, err := ReadKeyFile(write(name, c.text, c.mode))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	if _, err := ReadKeyFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file read")
	}
}
