package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/tetherlb/tether/testenv"
)

// The wrk rows (the issue's own benchmark): HTTP requests through each
// column at 64 concurrent connections, kept alive, and with
// "Connection: close" (a new connection each request), with wrk's p50
// and p99. The backend answers HTTP on the same port as its own protocol.

// wrkResult is one wrk run: requests/s and latency percentiles, and
// where the CPU went: the balancer process's time a request (0 for a
// column with no process of its own), the part of it in user space, and
// the share of the machine's
// CPUs busy meanwhile (all of them: clients, servers, the balancer and
// the kernel's packet work). A balancer that spends less a request
// makes more requests only as far as the CPUs it frees are what the
// run was short of.
type wrkResult struct {
	rps      float64
	p50, p99 time.Duration
	cpu      time.Duration
	user     time.Duration // of cpu
	busy     float64
}

// serveHTTP answers HTTP/1.1 requests on c (whose first byte, 'G', was
// read) with a 2-byte body, keeping the connection unless asked to close.
func serveHTTP(c net.Conn) {
	r := bufio.NewReader(io.MultiReader(strings.NewReader("G"), c))
	for {
		closing := false
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if strings.EqualFold(strings.TrimSpace(line), "connection: close") {
				closing = true
			}
			if line == "\r\n" {
				break
			}
		}
		hdr := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
		if closing {
			hdr += "Connection: close\r\n"
		}
		if _, err := io.WriteString(c, hdr+"\r\nok"); err != nil || closing {
			return
		}
	}
}

var (
	wrkRPS     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkCount   = regexp.MustCompile(`(?m)^\s+([0-9]+) requests in `)
	wrkPercent = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
)

// runWrk runs wrk from host h against url for dur: 64 connections on 2
// threads, with extra arguments (a header). pid is the balancer's
// process, whose CPU time it reads (0: none).
func runWrk(h *testenv.Host, url string, dur time.Duration, pid int, extra ...string) (wrkResult, error) {
	bin, err := exec.LookPath("wrk")
	if err != nil {
		return wrkResult{}, errors.New("wrk is not installed (apt-get install wrk)")
	}
	args := append([]string{"-t2", "-c64", "-d" + strconv.Itoa(max(1, int(dur.Seconds()))) + "s", "--latency"}, extra...)
	cmd := exec.Command(bin, append(args, url)...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	before, _ := readCPU(pid)
	if err := h.Start(cmd); err != nil {
		return wrkResult{}, err
	}
	if err := cmd.Wait(); err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %w: %s", err, out.String())
	}
	after, _ := readCPU(pid)
	var r wrkResult
	m := wrkRPS.FindStringSubmatch(out.String())
	if m == nil {
		return r, fmt.Errorf("wrk: no Requests/sec in %q", out.String())
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	if n := wrkCount.FindStringSubmatch(out.String()); n != nil {
		reqs, _ := strconv.ParseFloat(n[1], 64)
		r.cpu, r.user, r.busy = after.since(before, reqs)
	}
	for _, p := range wrkPercent.FindAllStringSubmatch(out.String(), -1) {
		v, _ := strconv.ParseFloat(p[2], 64)
		d := time.Duration(v * float64(map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[p[3]]))
		if p[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if strings.Contains(out.String(), "Non-2xx") || strings.Contains(out.String(), "Socket errors") {
		return r, fmt.Errorf("wrk saw errors: %s", out.String())
	}
	return r, nil
}
