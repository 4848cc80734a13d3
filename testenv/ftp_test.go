package testenv

import (
	"bytes"
	"crypto/md5"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"
)

// vsftpd on a backend, in passive mode, serves a client host across the
// load balancer's routing; the download is intact.
func TestFTPServer(t *testing.T) {
	e := Start(t, Spec{Backends: 1, Label: "ftp"})
	if _, err := exec.LookPath("curl"); err != nil {
		if required() {
			t.Fatal("curl is missing in CI; .ci/run installs it")
		}
		t.Skip("curl is not installed")
	}
	file := make([]byte, 3<<20)
	rand.NewChaCha8([32]byte{4}).Read(file)
	err := e.Backends[0].StartFTP(FTPOptions{Files: map[string][]byte{"data.bin": file}})
	if err != nil {
		if _, lerr := exec.LookPath("vsftpd"); lerr != nil && !required() {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	out, err := os.CreateTemp(t.TempDir(), "dl")
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	curl := exec.Command("curl", "-sS", "--ftp-pasv", "--max-time", "20", "--interface", ClientAddr(0).String(), "ftp://"+BackendAddr(0).String()+"/data.bin")
	curl.Stdout, curl.Stderr = out, &stderr
	if err := e.Clients[0].Start(curl); err != nil {
		t.Fatal(err)
	}
	if err := curl.Wait(); err != nil {
		t.Fatalf("curl: %v: %s", err, stderr.String())
	}
	got, _ := os.ReadFile(out.Name())
	if md5.Sum(got) != md5.Sum(file) {
		t.Fatalf("downloaded %d bytes, md5 differs from the %d served", len(got), len(file))
	}
}
