package main

import (
	"context"
	"fmt"
	"os"
	"time"
)

type result struct {
	stream, streams8 float64 // bytes/s
	connsPerSec      float64
	p50, p99         time.Duration
	newClients       float64 // connections/s, each from a new address (network namespaces only)
	// keepAlive and closing are wrk's rows (network namespaces, when wrk
	// is installed): 64 connections kept alive, and a new one a request.
	keepAlive, closing wrkResult
}

// benchTCP is the loopback TCP table: direct, tether and HAProxy, each
// once a round; with several rounds, medians and tether's ratio to
// HAProxy in each round (their median and range), as the ns table's.
func benchTCP(ctx context.Context, dir, backend, listen string, pid int, dur time.Duration, rounds int) error {
	var all [][]column
	peer := ""
	for i := range max(rounds, 1) {
		direct, err := measure(loopback(backend), dur)
		if err != nil {
			return fmt.Errorf("direct: %w", err)
		}
		through, err := measure(loopback(listen), dur)
		if err != nil {
			return fmt.Errorf("through tether: %w", err)
		}
		mem, _ := readMemory(pid)
		cols := []column{{"direct", direct, memory{}}, {"tether", through, mem}}
		if hap, err := runHAProxy(ctx, dir, backend, dur); err == nil {
			cols = append(cols, hap)
			peer = hap.name
		} else if i == 0 {
			fmt.Fprintln(os.Stderr, "tetherbench: no HAProxy column:", err)
		}
		all = append(all, cols)
		printRound(i, rounds, cols)
	}
	printMedians(all)
	if peer != "" {
		printVersus(all, "tether", peer)
	}
	fmt.Println()
	return nil
}
