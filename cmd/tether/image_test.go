package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherlb/tether/testenv"
)

// The container image as a user builds it (`just image`: a static binary
// built outside, then podman build --network=none from scratch), its root
// filesystem exported, and its entrypoint and command run as the image
// defines them, as the image's user, chrooted into that filesystem, in
// the load-balancer host of a test network (this machine's cgroups stop
// podman run): it serves a sticky service to a client there.
func TestContainerImage(t *testing.T) {
	podman := needTool(t, "podman")
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 20, Backends: 3, Label: "image"})
	for _, b := range env.Backends {
		if _, err := b.ServeName(8080); err != nil {
			t.Fatal(err)
		}
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.TempDir()
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = ctx
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// The build context: what the Containerfile copies, and the binary
	// built as the Justfile builds it.
	run("cp", "-r", filepath.Join(repo, "Containerfile"), filepath.Join(repo, "deploy"), ctx)
	build := exec.Command("go", "build", "-tags", shipTags, "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(ctx, "dist", "tether"), "./cmd/tether")
	build.Dir, build.Env = repo, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	tag, name := fmt.Sprintf("localhost/tether-test:%d", os.Getpid()), fmt.Sprintf("tether-test-%d", os.Getpid())
	run(podman, "build", "--network=none", "-q", "-t", tag, "-f", "Containerfile", ".")
	t.Cleanup(func() { exec.Command(podman, "rmi", "-f", tag).Run() })
	var cfg struct {
		Config struct {
			User            string
			Entrypoint, Cmd []string
		}
	}
	var inspected []json.RawMessage
	if err := json.Unmarshal([]byte(run(podman, "image", "inspect", tag)), &inspected); err != nil || len(inspected) != 1 {
		t.Fatalf("podman image inspect: %v", err)
	}
	if err := json.Unmarshal(inspected[0], &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Config.User != "65532:65532" || len(cfg.Config.Entrypoint) == 0 {
		t.Fatalf("image config %+v: want user 65532:65532 and an entrypoint", cfg.Config)
	}
	run(podman, "create", "--network=none", "--name", name, tag)
	t.Cleanup(func() { exec.Command(podman, "rm", "-f", name).Run() })
	run(podman, "export", name, "-o", "rootfs.tar")
	root := filepath.Join(ctx, "root")
	run("mkdir", root)
	run("tar", "-xf", "rootfs.tar", "-C", root)
	if _, err := os.Stat(filepath.Join(root, "bin", "sh")); err == nil {
		t.Error("the image has a shell")
	}
	// The config where the image reads it (a mounted ConfigMap in a pod).
	if err := os.MkdirAll(filepath.Join(root, "etc", "tether"), 0o755); err != nil {
		t.Fatal(err)
	}
	var servers strings.Builder
	for i := range env.Backends {
		fmt.Fprintf(&servers, "      - address: %s:8080\n", testenv.BackendAddr(i))
	}
	conf := fmt.Sprintf("admin: {socket: /run/tether/admin.sock}\nservices:\n  - name: web\n    listen: %s:8080\n    scheduler: rr\n    persistence: {}\n    servers:\n%s", testenv.VIP, servers.String())
	if err := os.WriteFile(filepath.Join(root, "etc", "tether", "tether.yaml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := append(cfg.Config.Entrypoint, cfg.Config.Cmd...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/"
	cmd.Env = []string{}
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Credential: &syscall.Credential{Uid: 65532, Gid: 65532}}
	if err := env.LB.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	vip := netip.AddrPortFrom(testenv.VIP, 8080)
	deadline := time.Now().Add(10 * time.Second)
	for {
		dctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := env.Clients[0].Dial(dctx, "tcp", env.Clients[0].Addr(0), vip.String())
		cancel()
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the image's tether never served %s: %v\n%s", vip, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	s := testenv.Summarize(env.Clients[0].Drive(context.Background(), testenv.VIP, []int{8080}, 3))
	if s.Failed != 0 || len(s.Mixed) != 0 || s.Visits != 60 {
		t.Fatalf("%d visits, %d failed, %d clients on two servers: %v\n%s", s.Visits, s.Failed, len(s.Mixed), s.Errors, logs.String())
	}
	if len(s.PerBackend) < 2 {
		t.Errorf("every client went to %s: persistence proves nothing", s.Spread())
	}
	t.Logf("the image's tether served 20 clients 3 times each, none on two servers (%s)", s.Spread())
}
