// Command tetherbench measures tether against a direct connection, in one
// run: on loopback (the socket proxy, and HAProxy when installed), then in
// network namespaces (the director, a static kernel DNAT rule and the
// socket proxy, against the kernel forwarding straight to the server):
// single-stream and 8-stream throughput, new connections per second,
// request/response latency, and tether's peak RSS. It prints every figure
// with its ratio to direct, so the numbers mean the same on any machine.
//
//	go run ./cmd/tetherbench [-duration 3s]
//
// It builds tether, runs it as a child process on an embedded
// configuration, and removes everything it started when it ends.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/proxy"
	"github.com/tetherlb/tether/testenv"
)

func main() {
	dur := flag.Duration("duration", 3*time.Second, "how long each measurement runs")
	flag.StringVar(&only, "only", "", "run one table: tcp, udp or ns (default: all)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of this process (clients and the in-process director) to this file")
	flag.StringVar(&tetherProfile, "tether-cpuprofile", "", "write a CPU profile of the loopback tether process to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tetherbench:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
	}
	err := bench(*dur)
	if *cpuprofile != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tetherbench:", err)
		os.Exit(1)
	}
}

// backend modes, chosen by the first byte a client sends.
const (
	modeSink  = 's' // read and discard until EOF
	modeEcho  = 'e' // echo
	modeClose = 'c' // write one byte and close (server closes first)
)

func serveBackend(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var m [1]byte
			if _, err := io.ReadFull(c, m[:]); err != nil {
				return
			}
			switch m[0] {
			case modeSink:
				io.Copy(io.Discard, c)
			case modeEcho:
				io.Copy(c, c)
			case modeClose:
				c.Write(m[:])
			}
		}()
	}
}

type result struct {
	stream, streams8 float64 // bytes/s
	connsPerSec      float64
	p50, p99         time.Duration
}

func bench(dur time.Duration) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	go serveBackend(ln)

	dir, err := os.MkdirTemp("", "tetherbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "tether")
	build := exec.Command("go", "build", "-o", bin, "./cmd/tether")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build tether (run from the repository root): %w", err)
	}
	listen, err := freeAddr()
	if err != nil {
		return err
	}
	echo, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	defer echo.Close()
	go serveUDPEcho(echo)
	udpListen, err := freeUDPAddr()
	if err != nil {
		return err
	}
	cfg := filepath.Join(dir, "bench.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`services:
  - name: bench
    listen: %s
    scheduler: wlc
    persistence: {timeout: 300s}
    servers: [{address: %s}]
  - name: bench-udp
    protocol: udp
    listen: %s
    persistence: {timeout: 300s}
    servers: [{address: %s}]
`, listen, ln.Addr(), udpListen, echo.LocalAddr())), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	args := []string{"--log-level", "warn", "run", "--config", cfg}
	if tetherProfile != "" {
		args = append(args, "--cpuprofile", tetherProfile)
	}
	tether := exec.CommandContext(ctx, bin, args...)
	tether.Stderr = os.Stderr
	if err := tether.Start(); err != nil {
		return err
	}
	defer tether.Wait()
	defer tether.Process.Signal(os.Interrupt)
	if err := waitListening(listen); err != nil {
		return err
	}

	fmt.Printf("tetherbench: %s per measurement, loopback, GOMAXPROCS %s\n\n", dur, os.Getenv("GOMAXPROCS"))
	if only == "" || only == "tcp" {
		if err := benchTCP(ctx, dir, ln.Addr().String(), listen, tether.Process.Pid, dur); err != nil {
			return err
		}
	}
	if only == "" || only == "udp" {
		if err := benchUDP(echo.LocalAddr().String(), udpListen, dur); err != nil {
			return err
		}
	}
	if only == "" || only == "ns" {
		return benchNamespaces(dur)
	}
	return nil
}

// only is the -only flag: the one table to run; tetherProfile is
// -tether-cpuprofile.
var only, tetherProfile string

// benchTCP is the loopback TCP table: direct, tether and HAProxy.
func benchTCP(ctx context.Context, dir, backend, listen string, pid int, dur time.Duration) error {
	direct, err := measure(loopback(backend), dur)
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	through, err := measure(loopback(listen), dur)
	if err != nil {
		return fmt.Errorf("through tether: %w", err)
	}
	rss, _ := peakRSS(pid)
	cols := []column{{"direct", direct, 0}, {"tether", through, rss}}
	if peer, err := runHAProxy(ctx, dir, backend, dur); err == nil {
		cols = append(cols, peer)
	} else {
		fmt.Fprintln(os.Stderr, "tetherbench: no HAProxy column:", err)
	}
	printTable(cols)
	fmt.Println()
	return nil
}

// benchUDP is the loopback UDP table.
func benchUDP(echo, udpListen string, dur time.Duration) error {
	fmt.Printf("| UDP, 8 clients | direct | tether |\n|---|---|---|\n")
	for _, m := range []struct {
		name         string
		size, window int
	}{{"request/response, 64 B", 64, 1}, {"request/response, 1400 B", 1400, 1}, {"16 in flight, 64 B", 64, 16}, {"16 in flight, 1400 B", 1400, 16}} {
		d, err := udpRate(echo, m.size, m.window, 8, dur)
		if err != nil {
			return fmt.Errorf("udp direct: %w", err)
		}
		t, err := udpRate(udpListen, m.size, m.window, 8, dur)
		if err != nil {
			return fmt.Errorf("udp through tether: %w", err)
		}
		fmt.Printf("| datagrams/s, %s | %.0f | %.0f (%.2fx) |\n", m.name, d, t, t/d)
	}
	fmt.Println()
	return nil
}

// nftIn loads rules with nft -f in host h.
func nftIn(h *testenv.Host, rules string) error {
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := h.Start(cmd); err != nil {
		return err
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("nft: %w: %s", err, out.String())
	}
	return nil
}

// benchNamespaces measures the director where it works: a client host
// reaching servers through the load-balancer host, in network namespaces.
// Direct is the same client reaching the server's own address through the
// same host, forwarded by the kernel; the socket proxy runs there too.
func benchNamespaces(dur time.Duration) error {
	if why := testenv.Missing(); why != "" {
		fmt.Printf("\n(no director figures: %s)\n", why)
		return nil
	}
	env, err := testenv.New(testenv.Spec{Clients: 1, AddrsPerClient: 32, Backends: 1, Label: "bench"})
	if err != nil {
		return err
	}
	defer env.Close()
	ln, err := env.Backends[0].Listen("tcp", ":8080")
	if err != nil {
		return err
	}
	go serveBackend(ln)
	client := env.Clients[0]
	inHost := func(addr string) dialer {
		return func(w, i int) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return client.Dial(ctx, "tcp", client.Addrs[(w*5+i)%len(client.Addrs)], addr)
		}
	}
	server := netip.AddrPortFrom(testenv.BackendAddr(0), 8080).String()
	vip := netip.AddrPortFrom(testenv.VIP, 80).String()
	fmt.Printf("\nnetwork namespaces: client -> load balancer -> server (veth and bridges), %s per measurement\n\n", dur)
	direct, err := measure(inHost(server), dur)
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	cols := []column{{"direct (forwarded)", direct, 0}}
	// The kernel's own cost of a NATed flow, with no decision in userspace:
	// the floor the director can reach.
	rules := fmt.Sprintf("table ip benchnat {\n\tchain pre {\n\t\ttype nat hook prerouting priority dstnat;\n\t\tip daddr %s tcp dport 80 dnat to %s\n\t}\n}\n", testenv.VIP, server)
	if err := nftIn(env.LB, rules); err != nil {
		fmt.Fprintln(os.Stderr, "tetherbench: no static DNAT column:", err)
	} else {
		r, err := measure(inHost(vip), dur)
		if err := errors.Join(err, nftIn(env.LB, "delete table ip benchnat\n")); err != nil {
			return fmt.Errorf("static dnat: %w", err)
		}
		cols = append(cols, column{"kernel DNAT rule", r, 0})
	}
	for _, mode := range []string{"director", "proxy"} {
		cfg, err := config.Parse("bench", []byte(fmt.Sprintf("mode: %s\ndirector: {queues: 2}\nservices:\n  - name: bench\n    listen: %s\n    persistence: {timeout: 300s}\n    servers: [{address: %s}]\n", mode, vip, server)))
		if err != nil {
			return err
		}
		p := proxy.New(cfg, proxy.Options{Do: env.LB.Do})
		if err := env.LB.Do(p.Start); err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
		r, err := measure(inHost(vip), dur)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		env.LB.Do(func() error { return p.Shutdown(ctx) })
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
		name := "tether director"
		if mode == "proxy" {
			name = "tether socket proxy"
		}
		cols = append(cols, column{name, r, 0})
	}
	printTable(cols)
	return nil
}

func serveUDPEcho(c *net.UDPConn) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		c.WriteToUDPAddrPort(buf[:n], from)
	}
}

func freeUDPAddr() (string, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.LocalAddr().String(), nil
}

// udpRate counts datagrams (requests and replies) per second over clients
// that each send window datagrams of size bytes and wait for their echoes,
// for dur: window 1 is request/response, more is a pipelined stream, where
// batched reads and writes pay. A lost datagram costs its client a 100 ms
// wait, not the run.
func udpRate(addr string, size, window, clients int, dur time.Duration) (float64, error) {
	return forWorkers(clients, dur, func(w int, deadline time.Time, count func(int64)) error {
		d := net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 11, 0, byte(w+1))}}
		c, err := d.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		msg, got := make([]byte, size), make([]byte, 64<<10)
		for time.Now().Before(deadline) {
			for range window {
				if _, err := c.Write(msg); err != nil {
					return err
				}
			}
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			for range window {
				if _, err := c.Read(got); err != nil {
					break
				}
				count(2)
			}
		}
		return nil
	})
}

type column struct {
	name string
	r    result
	rss  int64
}

// printTable prints each figure with its ratio to the first column.
func printTable(cols []column) {
	fmt.Print("| measurement |")
	for _, c := range cols {
		fmt.Printf(" %s |", c.name)
	}
	fmt.Print("\n|---|" + strings.Repeat("---|", len(cols)) + "\n")
	gb := func(v float64) string { return fmt.Sprintf("%.2f GB/s", v/1e9) }
	row := func(name string, val func(result) float64, show func(float64) string) {
		fmt.Printf("| %s |", name)
		base := val(cols[0].r)
		for i, c := range cols {
			v := val(c.r)
			if i == 0 {
				fmt.Printf(" %s |", show(v))
				continue
			}
			fmt.Printf(" %s (%.2fx) |", show(v), v/base)
		}
		fmt.Println()
	}
	dur := func(v float64) string { return time.Duration(v).Round(100 * time.Nanosecond).String() }
	row("throughput, 1 stream", func(r result) float64 { return r.stream }, gb)
	row("throughput, 8 streams", func(r result) float64 { return r.streams8 }, gb)
	row("new connections/s, 8 clients", func(r result) float64 { return r.connsPerSec }, func(v float64) string { return fmt.Sprintf("%.0f", v) })
	row("request/response p50, 64 B", func(r result) float64 { return float64(r.p50) }, dur)
	row("request/response p99, 64 B", func(r result) float64 { return float64(r.p99) }, dur)
	if cols[len(cols)-1].rss == 0 {
		return // measured in this process: no RSS of its own
	}
	fmt.Print("| peak RSS | |")
	for _, c := range cols[1:] {
		fmt.Printf(" %.1f MiB |", float64(c.rss)/(1<<20))
	}
	fmt.Println()
}

// runHAProxy measures HAProxy in TCP mode with splice and source
// balancing, the setup tether's users replace, when it is installed.
func runHAProxy(ctx context.Context, dir, backend string, dur time.Duration) (column, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return column{}, errors.New("haproxy is not installed (apt-get install haproxy)")
	}
	listen, err := freeAddr()
	if err != nil {
		return column{}, err
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1m
  timeout server 1m
  option splice-auto
listen bench
  bind %s
  balance source
  server s1 %s
`, listen, backend)), 0o600)
	cmd := exec.CommandContext(ctx, bin, "-db", "-f", cfg)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return column{}, err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	if err := waitListening(listen); err != nil {
		return column{}, fmt.Errorf("%w: %s", err, stderr.String())
	}
	r, err := measure(loopback(listen), dur)
	if err != nil {
		return column{}, err
	}
	rss, _ := peakRSS(cmd.Process.Pid)
	return column{"HAProxy " + haproxyVersion(bin), r, rss}, nil
}

func haproxyVersion(bin string) string {
	out, _ := exec.Command(bin, "-v").Output()
	if f := strings.Fields(string(out)); len(f) > 2 {
		return strings.SplitN(f[2], "-", 2)[0]
	}
	return ""
}

// dialer opens the i-th connection of worker w. Each measurement dials
// the same way for direct and for tether, so the ratios compare paths.
type dialer func(w, i int) (net.Conn, error)

// loopback dials addr from source addresses across 127.10.0.0/16, so that
// no port range runs out.
func loopback(addr string) dialer {
	return func(w, i int) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 10, byte(w), byte(i%250+1))}, Timeout: 5 * time.Second}
		return d.Dial("tcp", addr)
	}
}

func measure(dial dialer, dur time.Duration) (result, error) {
	var r result
	var err error
	if r.stream, err = throughput(dial, 1, dur); err != nil {
		return r, err
	}
	if r.streams8, err = throughput(dial, 8, dur); err != nil {
		return r, err
	}
	if r.connsPerSec, err = connRate(dial, 8, dur); err != nil {
		return r, err
	}
	r.p50, r.p99, err = latency(dial, dur)
	return r, err
}

// forWorkers runs work in n goroutines until dur passes and returns the
// events per second they counted; the first error ends the measurement.
func forWorkers(n int, dur time.Duration, work func(w int, deadline time.Time, count func(int64)) error) (float64, error) {
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	deadline := time.Now().Add(dur)
	start := time.Now()
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := work(w, deadline, func(k int64) { total.Add(k) }); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(total.Load()) / time.Since(start).Seconds(), nil
}

// throughput sends to the sink over n connections for dur: bytes/s.
func throughput(dial dialer, n int, dur time.Duration) (float64, error) {
	return forWorkers(n, dur, func(w int, deadline time.Time, count func(int64)) error {
		c, err := dial(w, 0)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		buf[0] = modeSink
		for time.Now().Before(deadline) {
			k, err := c.Write(buf)
			count(int64(k))
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// connRate opens, uses and closes connections from n clients for dur.
func connRate(dial dialer, n int, dur time.Duration) (float64, error) {
	return forWorkers(n, dur, func(w int, deadline time.Time, count func(int64)) error {
		for i := 0; time.Now().Before(deadline); i++ {
			c, err := dial(w, i)
			if err != nil {
				return err
			}
			b := [1]byte{modeClose}
			_, err = c.Write(b[:])
			if err == nil {
				_, err = io.ReadFull(c, b[:])
			}
			c.Close()
			if err != nil {
				return err
			}
			count(1)
		}
		return nil
	})
}

// latency ping-pongs 64 bytes on one connection for dur.
func latency(dial dialer, dur time.Duration) (p50, p99 time.Duration, err error) {
	c, err := dial(0, 0)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if _, err := c.Write([]byte{modeEcho}); err != nil {
		return 0, 0, err
	}
	msg, got := make([]byte, 64), make([]byte, 64)
	var samples []time.Duration
	for deadline := time.Now().Add(dur); time.Now().Before(deadline); {
		t := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, 0, err
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return 0, 0, err
		}
		samples = append(samples, time.Since(t))
	}
	slices.Sort(samples)
	return samples[len(samples)/2], samples[len(samples)*99/100], nil
}

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

// peakRSS reads VmHWM, the process's peak resident set, in bytes.
func peakRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmHWM")
}
