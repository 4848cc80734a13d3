package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/proxy"
	"github.com/tetherlb/tether/testenv"
	"github.com/urfave/cli/v2"
)

// demoConfig is the embedded configuration `tether demo` runs: one
// persistent service on the VIP with a /24 netmask, three backends.
const demoConfig = `services:
  - name: web
    listen: 198.18.0.10:80
    scheduler: rr
    persistence: {timeout: 300s, netmask: 255.255.255.0}
    servers:
      - address: 198.19.0.11:8080
      - address: 198.19.0.12:8080
      - address: 198.19.0.13:8080
`

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "show persistence at work on network-namespace hosts (root, or user namespaces)",
		Description: "Builds a client host with 50 source addresses, a load-balancer host running\n" +
			"tether and three backends, drives traffic, prints which backend served each\n" +
			"client group and the persistence table, then stops a backend and shows its\n" +
			"clients moving once and staying. It leaves nothing behind.",
		Action: func(c *cli.Context) error {
			if m := testenv.Missing(); m != "" {
				code, err := testenv.Reexec(os.Args[1:])
				if err != nil {
					return cli.Exit("tether demo builds network namespaces. "+m+".", 2)
				}
				if code != 0 {
					return cli.Exit("", code)
				}
				return nil
			}
			return demo(c.Context, c.App.Writer)
		},
	}
}

// demo runs the demonstration and returns an error if tether did not keep
// every client on one backend.
func demo(ctx context.Context, w io.Writer) error {
	cfg, err := config.Parse("demo.yaml", []byte(demoConfig))
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "tether demo: persistence with a /24 netmask, on network-namespace hosts")
	env, err := testenv.New(testenv.Spec{Clients: 1, AddrsPerClient: 50, Backends: 3, Label: "demo"})
	if err != nil {
		return err
	}
	defer env.Close()
	servers := map[string]*testenv.Server{}
	for _, b := range env.Backends {
		s, err := b.ServeName(8080)
		if err != nil {
			return err
		}
		servers[b.Name] = s
	}
	p := proxy.New(cfg, proxy.Options{Do: env.LB.Do})
	if err := env.LB.Do(p.Start); err != nil {
		return err
	}
	defer p.Shutdown(context.Background())

	client := env.Clients[0]
	first, last := client.Addrs[0], client.Addrs[len(client.Addrs)-1]
	fmt.Fprintf(w, "\n  client0   50 source addresses, %s .. %s (4 to a /24: 13 client groups)\n", first, last)
	fmt.Fprintf(w, "  lb        tether on %s:80, scheduler rr, persistence 300s, netmask 255.255.255.0\n", testenv.VIP)
	fmt.Fprintf(w, "  backends  backend0 %s, backend1 %s, backend2 %s (port 8080)\n\n", testenv.BackendAddr(0), testenv.BackendAddr(1), testenv.BackendAddr(2))

	round := func(name string) (testenv.Summary, error) {
		start := time.Now()
		s := testenv.Summarize(client.Drive(ctx, testenv.VIP, []int{80}, 1))
		fmt.Fprintf(w, "  %-30s %d connections, %d failed, %s  [%s]\n", name, s.Visits, s.Failed, s.Spread(), time.Since(start).Round(time.Millisecond))
		if s.Failed != 0 {
			return s, fmt.Errorf("%d connections failed: %v", s.Failed, s.Errors)
		}
		return s, nil
	}
	var before []testenv.Visit
	for i := range 3 {
		s, err := round(fmt.Sprintf("round %d/3: every client once", i+1))
		if err != nil {
			return err
		}
		for c, b := range s.Seen {
			before = append(before, testenv.Visit{Src: c, Backend: b[0]})
		}
	}
	all := testenv.Summarize(before)
	if len(all.Mixed) != 0 {
		return fmt.Errorf("clients that reached two backends: %v", all.Mixed)
	}
	groups := all.Groups(24)
	fmt.Fprintln(w, "\n  which backend served each client group (3 rounds):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  client group\tclients\tbackend")
	for _, g := range sortedPrefixes(groups) {
		n := 0
		for c := range all.Seen {
			if g.Contains(c) {
				n++
			}
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\n", g, n, strings.Join(groups[g], ", "))
		if len(groups[g]) != 1 {
			return fmt.Errorf("group %s reached %v", g, groups[g])
		}
	}
	tw.Flush()
	perGroup := map[string]int{}
	for _, bs := range groups {
		perGroup[bs[0]]++
	}
	fmt.Fprintf(w, "  spread: backend0 %d groups, backend1 %d groups, backend2 %d groups; no client saw two backends\n",
		perGroup["backend0"], perGroup["backend1"], perGroup["backend2"])

	printTable(w, p.Table(), 6)

	fmt.Fprintln(w, "\n  stopping backend1 ...")
	servers["backend1"].Close()
	after := map[netip.Prefix][]string{}
	for i := range 2 {
		s, err := round(fmt.Sprintf("round %d/2 without backend1:", i+1))
		if err != nil {
			return err
		}
		for g, bs := range s.Groups(24) {
			after[g] = append(after[g], bs...)
		}
	}
	fmt.Fprintln(w, "\n  the groups backend1 served:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  client group\tbefore\tround 1\tround 2")
	moved := 0
	for _, g := range sortedPrefixes(groups) {
		was := groups[g][0]
		now := after[g]
		if was != "backend1" {
			if !sameAll(now, was) {
				return fmt.Errorf("group %s of a live backend moved: %s -> %v", g, was, now)
			}
			continue
		}
		if len(now) != 2 || now[0] != now[1] || now[0] == "backend1" {
			return fmt.Errorf("group %s did not move once and stay: %v", g, now)
		}
		moved++
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", g, was, now[0], now[1])
	}
	tw.Flush()
	fmt.Fprintf(w, "\n  %d groups moved off backend1 once and stayed on their new backend; the other groups never moved.\n", moved)
	printTable(w, p.Table(), 4)
	if err := p.Shutdown(ctx); err != nil {
		return err
	}
	if err := demoMarks(ctx, w, env); err != nil {
		return err
	}
	fmt.Fprintln(w, "\n  done: namespaces, links, rules and servers removed.")
	return nil
}

// demoMarkConfig puts HTTP, HTTPS and FTP (control and passive range) of
// the VIP under one firewall mark: one template per client for all four.
const demoMarkConfig = `marks:
  - name: site
    mark: 0x10
    protocol: both
    addresses: [198.18.0.10]
    ports: [80, 443, 21, 30000-30099]
services:
  - name: site
    fwmark: 0x10
    scheduler: rr
    persistence: {timeout: 300s}
    servers:
      - address: 198.19.0.11
      - address: 198.19.0.12
      - address: 198.19.0.13
`

// demoMarks is the demo's second part: nftables marks, TPROXY, and
// persistence across ports and protocols.
func demoMarks(ctx context.Context, w io.Writer, env *testenv.Env) error {
	fmt.Fprintln(w, "\n  part 2: one firewall mark over TCP and UDP 80, 443, 21 and 30000-30099 (nftables + TPROXY)")
	for _, b := range env.Backends {
		if _, err := b.ServeName(80); err != nil {
			return err
		}
		if _, err := b.ServeName(443); err != nil {
			return err
		}
		if _, err := b.ServeUDP(443); err != nil {
			return err
		}
	}
	ftp := ""
	if _, err := exec.LookPath("curl"); err != nil {
		ftp = "curl is not installed"
	}
	if _, err := exec.LookPath("vsftpd"); err != nil {
		ftp = "vsftpd is not installed"
	}
	if ftp == "" {
		for _, b := range env.Backends {
			err := b.StartFTP(testenv.FTPOptions{PasvAddress: testenv.VIP, PasvMinPort: 30000, PasvMaxPort: 30099,
				Files: map[string][]byte{"who": []byte(b.Name + "\n")}})
			if err != nil {
				return err
			}
		}
	} else {
		fmt.Fprintf(w, "  (the FTP column is skipped: %s; apt-get install vsftpd curl)\n", ftp)
	}
	cfg, err := config.Parse("demo-marks.yaml", []byte(demoMarkConfig))
	if err != nil {
		return err
	}
	p := proxy.New(cfg, proxy.Options{Do: env.LB.Do})
	if err := env.LB.Do(p.Start); err != nil {
		return err
	}
	defer p.Shutdown(ctx)
	fmt.Fprintln(w, "  nftables table inet tether applied in lb (tether nft show prints it); transparent listener on port", cfg.TProxyPort)

	client := env.Clients[0]
	type row struct{ seen []string }
	rows := make([]row, len(client.Addrs))
	steps := []string{"80", "443", "udp443", "ftp", "80"}
	for i, src := range client.Addrs {
		for _, step := range steps {
			name := "-"
			switch step {
			case "ftp":
				if ftp != "" {
					break
				}
				var out strings.Builder
				cmd := exec.Command("curl", "-sS", "--ftp-pasv", "--max-time", "10", "--interface", src.String(), "ftp://"+testenv.VIP.String()+"/who")
				cmd.Stdout = &out
				if err := client.Start(cmd); err != nil {
					return err
				}
				if err := cmd.Wait(); err != nil {
					return fmt.Errorf("ftp from %s: %w", src, err)
				}
				name = strings.TrimSpace(out.String())
			default:
				port, network := 80, "tcp"
				switch step {
				case "443":
					port = 443
				case "udp443":
					port, network = 443, "udp"
				}
				c, err := client.Dial(ctx, network, src, netip.AddrPortFrom(testenv.VIP, uint16(port)).String())
				if err != nil {
					return fmt.Errorf("%s from %s: %w", step, src, err)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if network == "udp" {
					c.Write([]byte("who?"))
				}
				line, err := bufio.NewReader(c).ReadString('\n')
				c.Close()
				if err != nil {
					return fmt.Errorf("%s from %s: %w", step, src, err)
				}
				name = strings.TrimSpace(line)
			}
			rows[i].seen = append(rows[i].seen, name)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  client\t:80\t:443\tudp :443\tftp\t:80 again")
	mixed := 0
	for i, r := range rows {
		distinct := map[string]bool{}
		for _, n := range r.seen {
			if n != "-" {
				distinct[n] = true
			}
		}
		if len(distinct) != 1 {
			mixed++
		}
		if i < 8 {
			fmt.Fprintf(tw, "  %s\t%s\n", client.Addrs[i], strings.Join(r.seen, "\t"))
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "  ... (%d clients in all)\n  %d of %d clients saw two backends across TCP 80, 443, UDP 443 and FTP: the mark is the service.\n", len(rows), mixed, len(rows))
	if mixed != 0 {
		return fmt.Errorf("%d clients saw two backends under one mark", mixed)
	}
	return nil
}

func sameAll(bs []string, b string) bool {
	for _, x := range bs {
		if x != b {
			return false
		}
	}
	return true
}

func sortedPrefixes(m map[netip.Prefix][]string) []netip.Prefix {
	var out []netip.Prefix
	for p := range m {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// printTable prints the first n templates of the persistence table, as
// `tether affinity ls` will.
func printTable(w io.Writer, t *affinity.Table, n int) {
	ls := t.List(affinity.Filter{})
	fmt.Fprintf(w, "\n  persistence table (%d of %d templates):\n", min(n, len(ls)), len(ls))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  service\tclient\treal server\texpires in\topen")
	for _, tp := range ls[:min(n, len(ls))] {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\n", tp.Service, tp.Client, tp.Server, tp.Remaining.Round(time.Second), tp.Active)
	}
	tw.Flush()
}
