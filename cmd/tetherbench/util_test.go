package main

import (
	"os"
	"testing"
)

// readMemory parses this process's /proc status: a peak at least its
// resident set now, which is its anonymous and file-backed pages (and
// shared memory, none here); a missing process is an error.
func TestReadMemory(t *testing.T) {
	m, err := readMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.anon <= 0 || m.file <= 0 || m.peak < m.anon+m.file {
		t.Errorf("memory %+v: want anonymous and file-backed pages, and a peak at least their sum", m)
	}
	if _, err := readMemory(1 << 30); err == nil {
		t.Error("no error for a process that does not exist")
	}
}
