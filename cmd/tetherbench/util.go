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

// cpuSample is a process's CPU time (user and system) and the
// machine's, in clock ticks: all CPUs' time and their idle time (idle
// and iowait), from /proc.
type cpuSample struct{ user, sys, total, idle int64 }

// clockTick is USER_HZ, the unit of /proc's CPU times: 100 on every
// Linux architecture Go runs on.
const clockTick = 10 * time.Millisecond

// readCPU samples the CPU time of process pid (0: none) and the machine's.
func readCPU(pid int) (cpuSample, error) {
	var c cpuSample
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return c, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return c, fmt.Errorf("/proc/stat: first line %q", line)
	}
	for i, v := range f[1:] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return c, fmt.Errorf("/proc/stat: %q: %w", v, err)
		}
		if i < 8 { // user nice system idle iowait irq softirq steal; guest time is in user already
			c.total += n
		}
		if i == 3 || i == 4 {
			c.idle += n
		}
	}
	if pid > 0 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return c, err
		}
		// The fields after the command's name, which ends with the last ')':
		// state is the first, utime the 12th and stime the 13th.
		i := strings.LastIndex(string(b), ") ")
		if i < 0 {
			return c, fmt.Errorf("/proc/%d/stat: %q", pid, b)
		}
		g := strings.Fields(string(b)[i+2:])
		if len(g) < 13 {
			return c, fmt.Errorf("/proc/%d/stat: %q", pid, b)
		}
		for j, p := range []*int64{&c.user, &c.sys} {
			n, err := strconv.ParseInt(g[11+j], 10, 64)
			if err != nil {
				return c, fmt.Errorf("/proc/%d/stat: %q: %w", pid, g[11+j], err)
			}
			*p = n
		}
	}
	return c, nil
}

// since is the process's CPU time for each of n requests between sample
// b and c, and the part of it in user space (0 without a process), and
// the share of the machine's CPU time that was busy.
func (c cpuSample) since(b cpuSample, n float64) (perRequest, user time.Duration, busy float64) {
	if c.user+c.sys > 0 && n > 0 {
		per := func(ticks int64) time.Duration { return time.Duration(float64(ticks) * float64(clockTick) / n) }
		perRequest, user = per(c.user+c.sys-b.user-b.sys), per(c.user-b.user)
	}
	if t := c.total - b.total; t > 0 {
		busy = 1 - float64(c.idle-b.idle)/float64(t)
	}
	return perRequest, user, busy
}
