package main

import (
	"os"
	"testing"
	"time"
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

// readCPU counts this process's CPU time: spinning for 200 ms of it
// shows as about that much (the clock ticks are 10 ms), a request at a
// time, most of it in user space, and the machine as busy; a missing
// process is an error.
func TestReadCPU(t *testing.T) {
	b, err := readCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var after cpuSample
	x := 1
	for deadline := time.Now().Add(10 * time.Second); after.user+after.sys < b.user+b.sys+20; {
		if time.Now().After(deadline) {
			t.Fatalf("this process's CPU time grew %d ticks in 10 s of spinning", after.user+after.sys-b.user-b.sys)
		}
		for range 1 << 20 {
			x = x*31 + 7
		}
		if after, err = readCPU(os.Getpid()); err != nil {
			t.Fatal(err)
		}
	}
	_ = x
	per, user, busy := after.since(b, 10)
	if per < 20*time.Millisecond || per > 40*time.Millisecond {
		t.Errorf("%v a request for %d ticks over 10 requests, want 20-40 ms", per, after.user+after.sys-b.user-b.sys)
	}
	if user < per/2 || user > per {
		t.Errorf("%v of %v a request in user space, for a loop that makes no system call: want most of it", user, per)
	}
	if busy <= 0 || busy > 1 {
		t.Errorf("machine busy %.2f while this process spun, want (0, 1]", busy)
	}
	if _, err := readCPU(1 << 30); err == nil {
		t.Error("no error for a process that does not exist")
	}
}
