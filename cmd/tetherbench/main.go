package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"time"
)

func main() {
	var o options
	flag.DurationVar(&o.dur, "duration", 3*time.Second, "how long each measurement runs")
	flag.StringVar(&o.only, "only", "", "run one table: tcp, udp or ns (default: all)")
	flag.IntVar(&o.rounds, "rounds", 1, "measure the tcp and ns tables this many times, every column once a round, and print medians")
	flag.StringVar(&o.columns, "columns", "", "in the ns table, measure only the columns whose names match this regular expression, besides direct (default: all)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of this process (clients and the in-process director) to this file")
	flag.StringVar(&o.tetherProfile, "tether-cpuprofile", "", "write a CPU profile of the loopback tether process to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tetherbench:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
	}
	err := bench(o)
	if *cpuprofile != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tetherbench:", err)
		os.Exit(1)
	}
}

func bench(o options) error {
	dur := o.dur
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
	// Built as it ships (Justfile, Containerfile): static, stripped,
	// without the CLI library's man-page writer. A cgo build with symbols
	// maps a binary half as large again, and its pages count in the peak
	// RSS the tables compare with HAProxy's.
	build := exec.Command("go", "build", "-tags", "urfave_cli_no_docs", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./cmd/tether")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
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
	if o.tetherProfile != "" {
		args = append(args, "--cpuprofile", o.tetherProfile)
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
	if o.only == "" || o.only == "tcp" {
		if err := benchTCP(ctx, dir, ln.Addr().String(), listen, tether.Process.Pid, dur, o.rounds); err != nil {
			return err
		}
	}
	if o.only == "" || o.only == "udp" {
		if err := benchUDP(ctx, dir, echo.LocalAddr().String(), udpListen, listen, dur); err != nil {
			return err
		}
	}
	if o.only == "" || o.only == "ns" {
		keep, err := regexp.Compile(o.columns)
		if err != nil {
			return fmt.Errorf("-columns: %w", err)
		}
		return benchNamespaces(dur, bin, keep, o.rounds)
	}
	return nil
}

// options are the command's flags.
type options struct {
	dur           time.Duration // each measurement's length
	only          string        // the one table to run; empty: all
	columns       string        // the ns table's columns to measure, a regular expression
	rounds        int           // the tcp and ns tables' rounds, medians reported
	tetherProfile string        // a CPU profile of the loopback tether process
}
