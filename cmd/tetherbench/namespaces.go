package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/proxy"
	"github.com/tetherlb/tether/testenv"
)

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

// newClients is how many connections the row of new clients makes, each
// from an address the balancer has not seen.
const newClients = 6000

// benchNamespaces measures the director where it works: a client host
// reaching servers through the load-balancer host, in network namespaces.
// Direct is the same client reaching the server's own address through the
// same host, forwarded by the kernel; the socket proxy runs there too.
func benchNamespaces(dur time.Duration, bin string, keep *regexp.Regexp, rounds int) error {
	if why := testenv.Missing(); why != "" {
		fmt.Printf("\n(no director figures: %s)\n", why)
		return nil
	}
	// client0's addresses make every row but one; client1's routed
	// sources are each used once per column, for the row of new clients:
	// thousands of them, so that the row lasts about a second (with 480,
	// as until 2026-12-03, it lasted a tenth, and its ranges were wide).
	env, err := testenv.New(testenv.Spec{Clients: 2, AddrsPerClient: 480, Backends: 1, Label: "bench"})
	if err != nil {
		return err
	}
	defer env.Close()
	newcomers, err := env.RoutedSources(env.Clients[1], newClients)
	if err != nil {
		return err
	}
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
	newcomer := env.Clients[1]
	fresh := func(addr string) func(i int) (net.Conn, error) {
		return func(i int) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return newcomer.Dial(ctx, "tcp", newcomers[i], addr)
		}
	}
	// warm makes client0's addresses returning clients: one connection
	// from each before the rows that use them (the 8 workers of the
	// connection rate go through all 480), so that those rows measure
	// clients a persistent balancer knows. Without it the director met
	// 472 of them for the first time in its connection-rate row: every
	// worker's flow went up the queue until the kernel map held its
	// client (1993 of a 4-second row's flows, most in its first 2
	// seconds), where the socket proxy and HAProxy pay nothing for a
	// new client.
	warm := func(addr string) error {
		const workers = 8
		_, err := forWorkers(workers, time.Minute, func(w int, _ time.Time, _ func(int64)) error {
			for a := w; a < len(client.Addrs); a += workers {
				if err := oneConn(inHost(addr), 0, a); err != nil { // worker 0's a-th: address a
					return err
				}
			}
			return nil
		})
		return err
	}
	// measureAll is every row of a column: the new clients last, so that
	// nothing else has used their addresses.
	wrkOK := true
	measureAll := func(addr string, dur time.Duration, pid int) (result, error) {
		if err := warm(addr); err != nil {
			return result{}, fmt.Errorf("warm-up: %w", err)
		}
		r, err := measure(inHost(addr), dur)
		if err == nil && wrkOK {
			var werr error
			url := "http://" + addr + "/"
			if r.keepAlive, werr = runWrk(client, url, dur, pid); werr == nil {
				r.closing, werr = runWrk(client, url, dur, pid, "-H", "Connection: close")
			}
			if werr != nil {
				fmt.Fprintln(os.Stderr, "tetherbench: no wrk rows:", werr)
				wrkOK = false
			}
		}
		if err == nil {
			r.newClients, err = newClientRate(fresh(addr), len(newcomers))
		}
		return r, err
	}
	server := netip.AddrPortFrom(testenv.BackendAddr(0), 8080).String()
	vip := netip.AddrPortFrom(testenv.VIP, 80).String()
	fmt.Printf("\nnetwork namespaces: client -> load balancer -> server (veth and bridges), %s per measurement", dur)
	if rounds > 1 {
		fmt.Printf("; medians of %d interleaved rounds (every column once a round), ratios the medians of each round's, with their range", rounds)
	}
	fmt.Print("\n\n")
	var all [][]column
	for i := range max(rounds, 1) {
		cols, err := nsRound(env, i, max(rounds, 1), dur, bin, keep, measureAll, inHost, client, server, vip)
		if err != nil {
			return err
		}
		all = append(all, cols)
		printRound(i, rounds, cols)
	}
	printMedians(all)
	printVersus(all, "tether socket proxy (process)", "HAProxy")
	printVersus(all, "tether mark service (process)", "HAProxy")
	printVersus(all, "mark service, TPROXY (process)", "HAProxy, TPROXY")
	printVersus(all, "tether mark service (process)", "mark service, TPROXY (process)")
	printVersus(all, "tether director (process)", "HAProxy")
	printVersus(all, "director rules, tether killed", "kernel DNAT rule")
	printVersus(all, "tether director (process)", "director rules, tether killed")
	printVersus(all, "tether director (process)", "kernel DNAT rule")
	return nil
}

// nsRound measures every column of the namespace table once.
func nsRound(env *testenv.Env, round, rounds int, dur time.Duration, bin string, keep *regexp.Regexp, measureAll func(string, time.Duration, int) (result, error),
	inHost func(string) dialer, client *testenv.Host, server, vip string) ([]column, error) {
	// Each column from an empty conntrack table: the entries the columns
	// before it left (their flows in TIME_WAIT for two minutes, some
	// 50 000 a column, more than the default table holds after a few)
	// are not its to pay for or trip over. Flushed once a round, the
	// columns measured last (the director's, by design) paid for all.
	flush := env.LB.FlushConntrack
	if err := flush(); err != nil {
		return nil, err
	}
	direct, err := measureAll(server, dur, 0)
	if err != nil {
		return nil, fmt.Errorf("direct: %w", err)
	}
	cols := []column{{"direct (forwarded)", direct, memory{}}}
	// The kernel's own cost of a NATed flow, with no decision in userspace:
	// the floor the director can reach.
	rules := fmt.Sprintf("table ip benchnat {\n\tchain pre {\n\t\ttype nat hook prerouting priority dstnat;\n\t\tip daddr %s tcp dport 80 dnat to %s\n\t}\n}\n", testenv.VIP, server)
	if !keep.MatchString("kernel DNAT rule") {
		// not asked for
	} else if err := flush(); err != nil {
		return nil, err
	} else if err := nftIn(env.LB, rules); err != nil {
		fmt.Fprintln(os.Stderr, "tetherbench: no static DNAT column:", err)
	} else {
		r, err := measureAll(vip, dur, 0)
		if err := errors.Join(err, nftIn(env.LB, "delete table ip benchnat\n")); err != nil {
			return nil, fmt.Errorf("static dnat: %w", err)
		}
		cols = append(cols, column{"kernel DNAT rule", r, memory{}})
	}
	// The director twice: with its kernel template map (returning
	// clients never go up the queue) and without (every new flow does).
	for _, run := range []struct{ name, mode, kmap string }{
		{"tether director", "director", "true"},
		{"director, every flow queued", "director", "false"},
		{"tether socket proxy", "proxy", "true"},
	} {
		if !keep.MatchString(run.name) {
			continue
		}
		if err := flush(); err != nil {
			return nil, err
		}
		mode := run.mode
		cfg, err := config.Parse("bench", []byte(fmt.Sprintf("mode: %s\ndirector: {queues: 2, kernel_templates: %s}\nservices:\n  - name: bench\n    listen: %s\n    persistence: {timeout: 300s}\n    servers: [{address: %s}]\n", mode, run.kmap, vip, server)))
		if err != nil {
			return nil, err
		}
		p := proxy.New(cfg, proxy.Options{Do: env.LB.Do})
		if err := env.LB.Do(p.Start); err != nil {
			return nil, fmt.Errorf("%s: %w", mode, err)
		}
		r, err := measureAll(vip, dur, 0)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		env.LB.Do(func() error { return p.Shutdown(ctx) })
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", mode, err)
		}
		cols = append(cols, column{run.name, r, memory{}})
	}
	// The director's process last: its flows leave conntrack entries and
	// its NAT anchor behind, which the columns after it would pay for.
	tp := tetherPeers(bin)
	var killed peer
	for i, pr := range tp {
		if pr.name == "director rules, tether killed" {
			killed = pr
			tp = append(tp[:i:i], tp[i+1:]...)
			break
		}
	}
	killed.afterUp = func(pid int) (func(), error) {
		// Every client of the 8-client row binds its template, which the
		// kernel map then holds; tether dies, its tables stay.
		for _, a := range client.Addrs {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			c, err := client.Dial(ctx, "tcp", a, vip)
			cancel()
			if err != nil {
				return nil, err
			}
			c.Close()
		}
		time.Sleep(200 * time.Millisecond) // the mirror writes every 20 ms; with one server every path goes to it anyway
		syscall.Kill(pid, syscall.SIGKILL)
		return func() {
			for _, fam := range []string{"ip", "ip6"} {
				nftIn(env.LB, "delete table "+fam+" tether\n")
			}
		}, nil
	}
	// The processes between come in an order that turns by a share of
	// itself each round (a third of the columns for three rounds), so
	// that no column keeps its place after the same others (HAProxy and
	// nginx used to follow tether's columns in every round).
	var mid []peer
	for _, pr := range slices.Concat(tp[1:], peers) {
		if keep.MatchString(pr.name) {
			mid = append(mid, pr)
		}
	}
	if len(mid) > 0 {
		k := round * len(mid) / rounds % len(mid)
		mid = slices.Concat(mid[k:], mid[:k])
	}
	for _, pr := range append(append(mid, killed), tp[0]) {
		if !keep.MatchString(pr.name) {
			continue
		}
		if err := flush(); err != nil {
			return nil, err
		}
		c, err := measurePeer(env, pr, vip, server, inHost(vip), func(dur time.Duration, pid int) (result, error) { return measureAll(vip, dur, pid) }, dur)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tetherbench: no column:", err)
			continue
		}
		cols = append(cols, c)
	}
	return cols, nil
}
