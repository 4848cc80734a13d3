package main

import (
	"os/exec"
	"testing"
)

// The VRRP example of the README (examples/cluster/keepalived.conf) is a
// configuration keepalived accepts as it is.
func TestKeepalivedExample(t *testing.T) {
	keepalived := needTool(t, "keepalived")
	out, err := exec.Command(keepalived, "--config-test", "-f", "../../examples/cluster/keepalived.conf").CombinedOutput()
	if err != nil {
		t.Fatalf("keepalived --config-test: %v\n%s", err, out)
	}
}
