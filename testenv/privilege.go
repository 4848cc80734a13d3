package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// required says a skip must be a failure: in CI, namespace tests must run.
func required() bool {
	return os.Getenv("CI") == "true" || os.Getenv("TETHER_REQUIRE_NETNS") == "1"
}

// inUserNS reports whether this process runs in a user namespace other
// than the initial one.
func inUserNS() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return !(len(f) == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295")
}

// Missing says what this process lacks to build hosts, or "" when it can.
func Missing() string {
	if os.Geteuid() == 0 {
		return ""
	}
	return fmt.Sprintf("network-namespace hosts need root (CAP_SYS_ADMIN and CAP_NET_ADMIN); this is uid %d "+
		"and no user namespace of its own could be made. Run as root (sudo), or on a kernel that allows "+
		"unprivileged user namespaces (kernel.unprivileged_userns_clone=1 where that sysctl exists, and "+
		"user.max_user_namespaces above 0), where tether re-runs itself in one", os.Geteuid())
}

// TB is the part of testing.TB that testenv uses. testenv takes it rather
// than testing.TB so that the tether binary, which builds hosts for its
// demo, does not link the testing package.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Error(args ...any)
	Skip(args ...any)
	Cleanup(func())
}

// M is the part of *testing.M that Main uses.
type M interface{ Run() int }

// Require skips t when hosts cannot be built here, and fails it instead
// when CI=true or TETHER_REQUIRE_NETNS=1.
func Require(t TB) {
	t.Helper()
	if m := Missing(); m != "" {
		if required() {
			t.Fatalf("namespace test cannot run, and CI requires it: %s", m)
		}
		t.Skip(m)
	}
}

// Start builds the topology of s for t and removes it when t ends, also
// when t fails or panics.
func Start(t TB, s Spec) *Env {
	t.Helper()
	Require(t)
	e, err := New(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	})
	return e
}

// reexecEnv marks the re-run inside a user namespace.
const reexecEnv = "TETHER_TESTENV_USERNS"

// Main runs a package's tests; call it from TestMain. Not root, it re-runs
// the test binary in a new user + network + mount namespace where it is
// root, if the kernel allows; otherwise it runs the tests as they are
// (namespace tests then skip, or fail in CI, through Require).
func Main(m M) int {
	if os.Geteuid() == 0 || os.Getenv(reexecEnv) == "1" {
		return m.Run()
	}
	code, err := Reexec(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: %v; namespace tests will skip\n", err)
		return m.Run()
	}
	return code
}

// Reexec runs this program again with args in a new user + network +
// mount namespace in which it is root, and returns its exit code. It
// fails when the kernel does not allow unprivileged user namespaces.
func Reexec(args []string) (int, error) {
	if os.Getenv(reexecEnv) == "1" {
		return 0, fmt.Errorf("already re-run in a user namespace")
	}
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), reexecEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}},
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("cannot re-run in a user namespace: %w", err)
	}
	if err := cmd.Wait(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), nil
		}
		return 1, err
	}
	return 0, nil
}

func lookPath(file string) (string, error) { return exec.LookPath(file) }
