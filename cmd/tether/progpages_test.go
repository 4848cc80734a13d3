package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A running tether holds less than half of its program's code and
// read-only data resident: starting it touched most of them, and it gave
// them back once started (package progpages).
func TestRunGivesBackProgramPages(t *testing.T) {
	dir := t.TempDir()
	web := freeAddr(t)
	path := writeConfig(t, dir, fmt.Sprintf("admin: {socket: %s}\nservices:\n  - name: web\n    listen: %s\n    persistence: {}\n    servers: [{address: %s}]\n",
		filepath.Join(dir, "admin.sock"), web, nameServer(t, "a")))
	cmd, logs := runChild(t, path, "TETHER_LOG_LEVEL=debug") // the debug line says when
	eventually(t, "web serves", func() error {
		n, err := ask(web)
		if err == nil && n != "a" {
			err = fmt.Errorf("answered %q", n)
		}
		return err
	})
	// Listeners open before run gives back what starting touched.
	eventually(t, "the start-up pages given back", func() error {
		if !strings.Contains(logs.String(), "after=started") {
			return fmt.Errorf("not yet:\n%s", logs)
		}
		return nil
	})
	mapped, resident := programMemory(t, cmd.Process.Pid)
	if resident*2 >= mapped {
		t.Errorf("%d of the program's %d read-only kB resident while serving, want less than half", resident, mapped)
	}
}

// programMemory sums the size and the resident part of a process's
// read-only mappings of its own program, in kB, from /proc/PID/smaps.
func programMemory(t *testing.T, pid int) (mapped, resident int) {
	t.Helper()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mine := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) >= 5 && strings.Contains(fields[0], "-"): // a mapping's header
			mine = len(fields) >= 6 && strings.Join(fields[5:], " ") == exe && !strings.Contains(fields[1], "w")
		case mine && len(fields) == 3 && (fields[0] == "Size:" || fields[0] == "Rss:"):
			kb, err := strconv.Atoi(fields[1])
			if err != nil {
				t.Fatal(err)
			}
			if fields[0] == "Size:" {
				mapped += kb
			} else {
				resident += kb
			}
		}
	}
	if err := sc.Err(); err != nil || mapped == 0 {
		t.Fatalf("no mapping of %s in smaps: %v", exe, err)
	}
	return mapped, resident
}
