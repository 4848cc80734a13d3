package main

import (
	"fmt"
	"strings"
	"time"
)

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
	if cols[0].r.newClients > 0 {
		row("new connections/s, each from a new client", func(r result) float64 { return r.newClients }, func(v float64) string { return fmt.Sprintf("%.0f", v) })
	}
	row("request/response p50, 64 B", func(r result) float64 { return float64(r.p50) }, dur)
	row("request/response p99, 64 B", func(r result) float64 { return float64(r.p99) }, dur)
	if wrkRan(cols) {
		num := func(v float64) string { return fmt.Sprintf("%.0f", v) }
		row("wrk -c64, keep-alive: requests/s", func(r result) float64 { return r.keepAlive.rps }, num)
		row("wrk -c64, keep-alive: p50", func(r result) float64 { return float64(r.keepAlive.p50) }, dur)
		row("wrk -c64, keep-alive: p99", func(r result) float64 { return float64(r.keepAlive.p99) }, dur)
		row("wrk -c64, Connection: close: requests/s", func(r result) float64 { return r.closing.rps }, num)
		row("wrk -c64, Connection: close: p50", func(r result) float64 { return float64(r.closing.p50) }, dur)
		row("wrk -c64, Connection: close: p99", func(r result) float64 { return float64(r.closing.p99) }, dur)
	}
	if cols[len(cols)-1].rss == 0 {
		return // measured in this process: no RSS of its own
	}
	fmt.Print("| peak RSS | |")
	for _, c := range cols[1:] {
		if c.rss == 0 {
			fmt.Print(" (in this process) |")
			continue
		}
		fmt.Printf(" %.1f MiB |", float64(c.rss)/(1<<20))
	}
	fmt.Println()
}

// wrkRan says every column has the wrk rows.
func wrkRan(cols []column) bool {
	for _, c := range cols {
		if c.r.keepAlive.rps == 0 || c.r.closing.rps == 0 {
			return false
		}
	}
	return true
}

// printVersus prints column a's figures as ratios to column b's: tether
// against the peer users compare it with.
func printVersus(cols []column, a, b string) {
	var ca, cb *column
	for i := range cols {
		switch cols[i].name {
		case a:
			ca = &cols[i]
		case b:
			cb = &cols[i]
		}
	}
	if ca == nil || cb == nil {
		return
	}
	fmt.Printf("\n%s / %s: throughput 1 stream %.2fx, 8 streams %.2fx, new connections/s %.2fx, p50 %.2fx, p99 %.2fx (latency: lower is better)",
		a, b, ca.r.stream/cb.r.stream, ca.r.streams8/cb.r.streams8, ca.r.connsPerSec/cb.r.connsPerSec,
		float64(ca.r.p50)/float64(cb.r.p50), float64(ca.r.p99)/float64(cb.r.p99))
	if ca.r.keepAlive.rps > 0 && cb.r.keepAlive.rps > 0 {
		fmt.Printf("; wrk keep-alive %.2fx (p99 %.2fx), Connection: close %.2fx (p99 %.2fx)",
			ca.r.keepAlive.rps/cb.r.keepAlive.rps, float64(ca.r.keepAlive.p99)/float64(cb.r.keepAlive.p99),
			ca.r.closing.rps/cb.r.closing.rps, float64(ca.r.closing.p99)/float64(cb.r.closing.p99))
	}
	fmt.Println()
}
