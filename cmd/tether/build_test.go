package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// shipTags are the build tags of the binary tether ships (Justfile,
// Containerfile, tetherbench): urfave/cli's markdown and man-page writer,
// which tether never calls, stays out (about 0.25 MB of binary and 0.3-0.6
// MiB of peak RSS: README, Performance).
const shipTags = "urfave_cli_no_docs"

// The shipped build leaves out the man-page writer's packages, and every
// place that builds the shipped binary says so. Without the tag they are
// linked: when the CLI library drops them on its own the tag is dead
// weight and this test says so.
func TestShippedBuildLeavesOutManPages(t *testing.T) {
	deps := func(tags ...string) string {
		t.Helper()
		args := append([]string{"list", "-deps"}, tags...)
		cmd := exec.Command("go", append(args, ".")...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	const writer = "github.com/cpuguy83/go-md2man"
	if !strings.Contains(deps(), writer) {
		t.Errorf("a build without -tags %s no longer links %s: drop the tag", shipTags, writer)
	}
	if d := deps("-tags", shipTags); strings.Contains(d, writer) || strings.Contains(d, "blackfriday") {
		t.Errorf("-tags %s still links the man-page writer", shipTags)
	}
	for _, f := range []string{"../../Justfile", "../../Containerfile", "../tetherbench/main.go"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), shipTags) {
			t.Errorf("%s builds tether without -tags %s", f, shipTags)
		}
	}
}
