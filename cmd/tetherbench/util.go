package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func waitListening(addr string) error {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("nothing listens on %s after 10 s", addr)
}

// memory is a process's resident set, in bytes: its peak (VmHWM), and,
// as the column ends, its anonymous pages (heap, stacks, buffers) and its
// file-backed ones (its program and libraries: a static Go binary's whole
// text, a C program's own and its share of libc's, libssl's, ...).
type memory struct{ peak, anon, file int64 }

// readMemory reads a process's memory from /proc.
func readMemory(pid int) (memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	defer f.Close()
	var m memory
	fields := map[string]*int64{"VmHWM:": &m.peak, "RssAnon:": &m.anon, "RssFile:": &m.file}
	s := bufio.NewScanner(f)
	for s.Scan() {
		for name, p := range fields {
			if v, ok := strings.CutPrefix(s.Text(), name); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				if err != nil {
					return memory{}, fmt.Errorf("%s %q: %w", name, v, err)
				}
				*p = kb << 10
			}
		}
	}
	if m.peak == 0 {
		return memory{}, errors.New("no VmHWM")
	}
	return m, nil
}
