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
