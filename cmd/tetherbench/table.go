package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

type column struct {
	name string
	r    result
	mem  memory // zero: measured in this process
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
		// No ratio to direct, which has no process of its own.
		fmt.Print("| wrk -c64, Connection: close: the balancer's CPU a request (user space) |")
		for _, c := range cols {
			if c.r.closing.cpu == 0 {
				fmt.Print(" |")
				continue
			}
			fmt.Printf(" %.1fµs (%.1f) |", float64(c.r.closing.cpu)/1e3, float64(c.r.closing.user)/1e3)
		}
		fmt.Print("\n| wrk -c64, Connection: close: the machine's CPUs busy |")
		for _, c := range cols {
			fmt.Printf(" %.0f%% |", 100*c.r.closing.busy)
		}
		fmt.Println()
	}
	if cols[len(cols)-1].mem.peak == 0 {
		return // measured in this process: no RSS of its own
	}
	mib := func(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }
	memRow := func(name string, f func(memory) string) {
		fmt.Printf("| %s | |", name)
		for _, c := range cols[1:] {
			if c.mem.peak == 0 {
				fmt.Print(" (in this process) |")
				continue
			}
			fmt.Printf(" %s MiB |", f(c.mem))
		}
		fmt.Println()
	}
	memRow("peak RSS", func(m memory) string { return mib(m.peak) })
	memRow("RSS at the end: anonymous / file-backed", func(m memory) string { return mib(m.anon) + " / " + mib(m.file) })
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
// against the peer users compare it with. With several rounds each ratio
// is the median of the rounds' own, with their range.
func printVersus(rounds [][]column, a, b string) {
	type pair struct{ a, b *column }
	var pairs []pair
	for _, cols := range rounds {
		var p pair
		for i := range cols {
			switch cols[i].name {
			case a:
				p.a = &cols[i]
			case b:
				p.b = &cols[i]
			}
		}
		if p.a != nil && p.b != nil {
			pairs = append(pairs, p)
		}
	}
	if len(pairs) == 0 {
		return
	}
	ratio := func(f func(result) float64) string {
		var rs []float64
		for _, p := range pairs {
			if y := f(p.b.r); y != 0 {
				rs = append(rs, f(p.a.r)/y)
			}
		}
		if len(rs) == 0 {
			return "-"
		}
		if len(rs) == 1 {
			return fmt.Sprintf("%.2fx", rs[0])
		}
		slices.Sort(rs)
		return fmt.Sprintf("%.2fx (%.2f-%.2f)", median(rs), rs[0], rs[len(rs)-1])
	}
	fmt.Printf("\n%s / %s: throughput 1 stream %s, 8 streams %s, new connections/s %s, each from a new client %s, p50 %s, p99 %s (latency: lower is better)",
		a, b, ratio(func(r result) float64 { return r.stream }), ratio(func(r result) float64 { return r.streams8 }),
		ratio(func(r result) float64 { return r.connsPerSec }), ratio(func(r result) float64 { return r.newClients }),
		ratio(func(r result) float64 { return float64(r.p50) }), ratio(func(r result) float64 { return float64(r.p99) }))
	if pairs[0].a.r.keepAlive.rps > 0 && pairs[0].b.r.keepAlive.rps > 0 {
		fmt.Printf("; wrk keep-alive %s (p99 %s), Connection: close %s (p99 %s)",
			ratio(func(r result) float64 { return r.keepAlive.rps }), ratio(func(r result) float64 { return float64(r.keepAlive.p99) }),
			ratio(func(r result) float64 { return r.closing.rps }), ratio(func(r result) float64 { return float64(r.closing.p99) }))
		if pairs[0].a.r.closing.cpu > 0 && pairs[0].b.r.closing.cpu > 0 {
			fmt.Printf(", its CPU a request %s", ratio(func(r result) float64 { return float64(r.closing.cpu) }))
		}
	}
	fmt.Println()
}

// printRound prints round i's table, when there are several rounds.
func printRound(i, rounds int, cols []column) {
	if rounds > 1 {
		fmt.Printf("round %d:\n\n", i+1)
		printTable(cols)
		fmt.Println()
	}
}

// printMedians prints the rounds' medians, or the one round's table.
func printMedians(all [][]column) {
	if len(all) > 1 {
		fmt.Printf("medians of the %d rounds:\n\n", len(all))
	}
	printTable(medianColumns(all))
}

// medianColumns merges rounds of the same columns: each figure is the
// median of the rounds', a column missing from a round is left out of
// that figure.
func medianColumns(rounds [][]column) []column {
	if len(rounds) == 1 {
		return rounds[0]
	}
	var out []column
	for _, c := range rounds[0] {
		var rs []column
		for _, cols := range rounds {
			for _, d := range cols {
				if d.name == c.name {
					rs = append(rs, d)
				}
			}
		}
		m := func(f func(column) float64) float64 { return medianOf(rs, f) }
		d := func(f func(column) time.Duration) time.Duration {
			return time.Duration(m(func(c column) float64 { return float64(f(c)) }))
		}
		mem := memory{
			peak: int64(m(func(c column) float64 { return float64(c.mem.peak) })),
			anon: int64(m(func(c column) float64 { return float64(c.mem.anon) })),
			file: int64(m(func(c column) float64 { return float64(c.mem.file) })),
		}
		out = append(out, column{name: c.name, mem: mem, r: result{
			stream:      m(func(c column) float64 { return c.r.stream }),
			streams8:    m(func(c column) float64 { return c.r.streams8 }),
			connsPerSec: m(func(c column) float64 { return c.r.connsPerSec }),
			newClients:  m(func(c column) float64 { return c.r.newClients }),
			p50:         d(func(c column) time.Duration { return c.r.p50 }),
			p99:         d(func(c column) time.Duration { return c.r.p99 }),
			keepAlive:   medianWrk(rs, func(r result) wrkResult { return r.keepAlive }),
			closing:     medianWrk(rs, func(r result) wrkResult { return r.closing }),
		}})
	}
	return out
}

// medianOf is the median of f over xs.
func medianOf[T any](xs []T, f func(T) float64) float64 {
	vs := make([]float64, len(xs))
	for i, x := range xs {
		vs[i] = f(x)
	}
	slices.Sort(vs)
	return median(vs)
}

// median of sorted vs.
func median(vs []float64) float64 {
	n := len(vs)
	if n%2 == 1 {
		return vs[n/2]
	}
	return (vs[n/2-1] + vs[n/2]) / 2
}

// medianWrk is the median of each figure of the columns' wrk runs.
func medianWrk(cols []column, run func(result) wrkResult) wrkResult {
	m := func(f func(wrkResult) float64) float64 {
		return medianOf(cols, func(c column) float64 { return f(run(c.r)) })
	}
	d := func(f func(wrkResult) time.Duration) time.Duration {
		return time.Duration(m(func(w wrkResult) float64 { return float64(f(w)) }))
	}
	return wrkResult{
		rps:  m(func(w wrkResult) float64 { return w.rps }),
		p50:  d(func(w wrkResult) time.Duration { return w.p50 }),
		p99:  d(func(w wrkResult) time.Duration { return w.p99 }),
		cpu:  d(func(w wrkResult) time.Duration { return w.cpu }),
		user: d(func(w wrkResult) time.Duration { return w.user }),
		busy: m(func(w wrkResult) float64 { return w.busy }),
	}
}
