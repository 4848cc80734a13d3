package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tetherlb/tether/admin"
	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/config"
	"github.com/urfave/cli/v2"
)

// adminFlags say where the admin API of the running tether is.
func adminFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "admin", Value: admin.DefaultSocket(), Usage: "the admin socket of the running tether (its admin.socket)", EnvVars: []string{"TETHER_ADMIN"}},
		&cli.StringFlag{Name: "admin-url", Usage: "the admin API over TCP instead, http://HOST:PORT (its admin.listen); needs --token-file", EnvVars: []string{"TETHER_ADMIN_URL"}},
		&cli.StringFlag{Name: "token-file", Usage: "file holding the bearer token of --admin-url", EnvVars: []string{"TETHER_TOKEN_FILE"}},
		&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "give up after this long"},
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "take the admin socket (admin.socket) from this configuration file", EnvVars: []string{"TETHER_CONFIG"}},
	}
}

func adminClient(c *cli.Context) (*admin.Client, context.Context, context.CancelFunc, error) {
	token := ""
	if c.String("admin-url") != "" {
		if c.String("token-file") == "" {
			return nil, nil, nil, cli.Exit("--admin-url needs --token-file", 2)
		}
		b, err := os.ReadFile(c.String("token-file"))
		if err != nil {
			return nil, nil, nil, cli.Exit("--token-file: "+err.Error(), 2)
		}
		token = strings.TrimSpace(string(b))
	}
	socket := c.String("admin")
	if path := c.String("config"); path != "" && !c.IsSet("admin") {
		cfg, err := config.Load(path)
		if err != nil {
			return nil, nil, nil, cli.Exit(err.Error(), 2)
		}
		switch cfg.Admin.Socket {
		case "off":
			return nil, nil, nil, cli.Exit(path+": admin.socket is off; use --admin-url", 2)
		case "":
		default:
			socket = cfg.Admin.Socket
		}
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	return admin.NewClient(socket, c.String("admin-url"), token), ctx, cancel, nil
}

func lsCommand() *cli.Command {
	return &cli.Command{
		Name:  "ls",
		Usage: "list the services and real servers of the running tether, as ipvsadm -Ln does",
		Description: "ActiveConn counts open TCP connections (director flows included), InActConn\n" +
			"UDP flows. --stats prints totals since start, --rate per-second rates measured\n" +
			"over --interval; the director's bytes are the kernel's and are not counted.",
		Flags: append(adminFlags(),
			&cli.BoolFlag{Name: "stats", Usage: "connections and bytes since start"},
			&cli.BoolFlag{Name: "rate", Usage: "connections and bytes per second, measured over --interval"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "how long --rate measures"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON for machines"},
		),
		Action: func(c *cli.Context) error {
			cl, ctx, cancel, err := adminClient(c)
			if err != nil {
				return err
			}
			defer cancel()
			svcs, err := cl.Services(ctx)
			if err != nil {
				return cli.Exit(err.Error(), 1)
			}
			w := c.App.Writer
			if c.Bool("rate") {
				time.Sleep(c.Duration("interval")) // the measuring window, as ipvsadm's estimator's
				later, err := cl.Services(ctx)
				if err != nil {
					return cli.Exit(err.Error(), 1)
				}
				rates := rateOf(svcs, later, c.Duration("interval"))
				if c.Bool("json") {
					return printJSON(w, rates)
				}
				printRates(w, rates)
				return nil
			}
			switch {
			case c.Bool("json"):
				return printJSON(w, svcs)
			case c.Bool("stats"):
				printStats(w, svcs)
			default:
				printList(w, svcs)
				switch st, err := cl.Cluster(ctx); {
				case err == nil:
					fmt.Fprintln(w)
					printMembers(w, st)
				case !noCluster(err):
					return cli.Exit(err.Error(), 1)
				}
			}
			return nil
		},
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// serviceAddr is the service's LocalAddress:Port column and its protocol.
func serviceAddr(s api.ServiceStatus) (prot, addr string) {
	if s.Fwmark != 0 {
		return "FWM", strconv.FormatUint(uint64(s.Fwmark), 10)
	}
	return strings.ToUpper(s.Protocol), s.Listen
}

// flags is the Flags column: ipvsadm's, then tether's own.
func flags(s api.ServiceStatus) string {
	var f []string
	if s.Persistent {
		f = append(f, "persistent", strconv.Itoa(int(s.Timeout/time.Second)))
		if s.Netmask != "255.255.255.255" {
			f = append(f, "mask", s.Netmask)
		}
		if s.Netmask6 != 128 {
			f = append(f, "mask6", "/"+strconv.Itoa(s.Netmask6))
		}
	}
	if s.Quorum > 0 {
		q := "quorum " + strconv.Itoa(s.Quorum)
		if !s.Quorate {
			q += " (below)"
		}
		f = append(f, q)
	}
	if len(s.Listeners) > 0 {
		f = append(f, "listens", strings.Join(s.Listeners, ","))
	}
	f = append(f, "name", s.Name)
	return strings.Join(f, " ")
}

func forward(s api.ServiceStatus) string {
	if s.Mode == string(config.ModeDirector) {
		return "Masq" // the director forwards with NAT, as IPVS's -m
	}
	return "Proxy"
}

func printList(w io.Writer, svcs []api.ServiceStatus) {
	fmt.Fprintf(w, "tether %s\n", version)
	fmt.Fprintln(w, "Prot LocalAddress:Port Scheduler Flags")
	fmt.Fprintln(w, "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn State")
	for _, s := range svcs {
		prot, addr := serviceAddr(s)
		fmt.Fprintf(w, "%-4s %s %s %s\n", prot, addr, s.Scheduler, flags(s))
		row := func(srv api.ServerStatus, state string) {
			fmt.Fprintf(w, "  -> %-28s %-7s %-6d %-10d %-9d %s\n", srv.Address, forward(s), srv.Weight, srv.ActiveConns, srv.InactiveConns, state)
		}
		for _, srv := range s.Servers {
			state := srv.State
			if srv.CheckError != "" && srv.State != "up" {
				state += " (" + srv.Check + ": " + srv.CheckError + ")"
			}
			row(srv, state)
		}
		if s.Sorry != nil {
			row(*s.Sorry, "sorry server")
		}
	}
}

func printStats(w io.Writer, svcs []api.ServiceStatus) {
	fmt.Fprintln(w, "Prot LocalAddress:Port               Conns  InBytes OutBytes")
	fmt.Fprintln(w, "  -> RemoteAddress:Port")
	for _, s := range svcs {
		prot, addr := serviceAddr(s)
		var conns, in, out uint64
		for _, srv := range all(s) {
			conns, in, out = conns+srv.Conns, in+srv.BytesIn, out+srv.BytesOut
		}
		fmt.Fprintf(w, "%-4s %-30s %8d %8s %8s\n", prot, addr, conns, human(float64(in)), human(float64(out)))
		for _, srv := range all(s) {
			fmt.Fprintf(w, "  -> %-30s %8d %8s %8s\n", srv.Address, srv.Conns, human(float64(srv.BytesIn)), human(float64(srv.BytesOut)))
		}
	}
}

// all is the service's servers, with the sorry server last.
func all(s api.ServiceStatus) []api.ServerStatus {
	if s.Sorry == nil {
		return s.Servers
	}
	return append(s.Servers[:len(s.Servers):len(s.Servers)], *s.Sorry)
}

// Rate is a service's or a server's rates over a window.
type Rate struct {
	Name    string  `json:"name,omitempty"`
	Address string  `json:"address"`
	Prot    string  `json:"protocol"`
	CPS     float64 `json:"conns_per_second"`
	InBPS   float64 `json:"bytes_in_per_second"`
	OutBPS  float64 `json:"bytes_out_per_second"`
	Servers []Rate  `json:"servers,omitempty"`
}

// rateOf works out the rates between two listings taken d apart; a
// service or server missing from either is left out.
func rateOf(before, after []api.ServiceStatus, d time.Duration) []Rate {
	sec := d.Seconds()
	prev := map[string]api.ServerStatus{}
	for _, s := range before {
		for _, srv := range all(s) {
			prev[s.Name+" "+srv.Address] = srv
		}
	}
	var out []Rate
	for _, s := range after {
		prot, addr := serviceAddr(s)
		r := Rate{Name: s.Name, Address: addr, Prot: prot}
		for _, srv := range all(s) {
			p, ok := prev[s.Name+" "+srv.Address]
			if !ok {
				continue
			}
			sr := Rate{Address: srv.Address, Prot: prot,
				CPS:   float64(srv.Conns-p.Conns) / sec,
				InBPS: float64(srv.BytesIn-p.BytesIn) / sec, OutBPS: float64(srv.BytesOut-p.BytesOut) / sec}
			r.CPS, r.InBPS, r.OutBPS = r.CPS+sr.CPS, r.InBPS+sr.InBPS, r.OutBPS+sr.OutBPS
			r.Servers = append(r.Servers, sr)
		}
		out = append(out, r)
	}
	return out
}

func printRates(w io.Writer, rates []Rate) {
	fmt.Fprintln(w, "Prot LocalAddress:Port                 CPS    InBPS   OutBPS")
	fmt.Fprintln(w, "  -> RemoteAddress:Port")
	for _, r := range rates {
		fmt.Fprintf(w, "%-4s %-30s %8.0f %8s %8s\n", r.Prot, r.Address, r.CPS, human(r.InBPS), human(r.OutBPS))
		for _, s := range r.Servers {
			fmt.Fprintf(w, "  -> %-30s %8.0f %8s %8s\n", s.Address, s.CPS, human(s.InBPS), human(s.OutBPS))
		}
	}
}

// human writes a count with K, M, G or T (powers of 1000), as ipvsadm --stats does.
func human(v float64) string {
	for _, u := range []string{"", "K", "M", "G", "T"} {
		if v < 1000 || u == "T" {
			if u == "" {
				return strconv.FormatFloat(v, 'f', 0, 64)
			}
			return strconv.FormatFloat(v, 'f', 1, 64) + u
		}
		v /= 1000
	}
	return ""
}

func affinityCommand() *cli.Command {
	filter := []cli.Flag{
		&cli.StringFlag{Name: "service", Usage: "the templates of this service (its name)"},
		&cli.StringFlag{Name: "client", Usage: "the template this client address falls into"},
		&cli.StringFlag{Name: "server", Usage: "the templates bound to this real server"},
	}
	filterOf := func(c *cli.Context) api.TemplateFilter {
		return api.TemplateFilter{Service: c.String("service"), Client: c.String("client"), Server: c.String("server")}
	}
	return &cli.Command{
		Name:  "affinity",
		Usage: "list or remove persistence templates of the running tether",
		Subcommands: []*cli.Command{{
			Name:  "ls",
			Usage: "list templates: client group, server, open connections, time left (ipvsadm -Lc --persistent-conn)",
			Flags: append(append(adminFlags(), filter...), &cli.BoolFlag{Name: "json", Usage: "print JSON for machines"}),
			Action: func(c *cli.Context) error {
				cl, ctx, cancel, err := adminClient(c)
				if err != nil {
					return err
				}
				defer cancel()
				ts, err := cl.Templates(ctx, filterOf(c))
				if err != nil {
					return cli.Exit(err.Error(), 1)
				}
				if c.Bool("json") {
					return printJSON(c.App.Writer, ts)
				}
				tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
				// A PEERS column (other instances' open connections) only
				// in a cluster that has some.
				peers := slices.ContainsFunc(ts, func(t api.TemplateStatus) bool { return t.Peers > 0 })
				head := "SERVICE\tCLIENT\tSERVER\tCONNS\t"
				if peers {
					head += "PEERS\t"
				}
				fmt.Fprintln(tw, head+"EXPIRES")
				for _, t := range ts {
					conns := strconv.Itoa(t.Active) + "\t"
					if peers {
						conns += strconv.Itoa(t.Peers) + "\t"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s%s\n", t.Service, t.Client, t.Server, conns, clock(t.Remaining))
				}
				return tw.Flush()
			},
		}, {
			Name:  "rm",
			Usage: "remove templates: one client's, a service's, a server's, or --all; their clients are rescheduled",
			Flags: append(append(adminFlags(), filter...), &cli.BoolFlag{Name: "all", Usage: "every template of every service"}),
			Action: func(c *cli.Context) error {
				f := filterOf(c)
				if f == (api.TemplateFilter{}) && !c.Bool("all") {
					return cli.Exit("say which templates: --service, --client, --server, or --all", 2)
				}
				cl, ctx, cancel, err := adminClient(c)
				if err != nil {
					return err
				}
				defer cancel()
				n, err := cl.RemoveTemplates(ctx, f, c.Bool("all"))
				if err != nil {
					return cli.Exit(err.Error(), 1)
				}
				fmt.Fprintf(c.App.Writer, "removed %d templates\n", n)
				return nil
			},
		}},
	}
}

// clock writes a duration as ipvsadm's expire column: mm:ss.
func clock(d time.Duration) string {
	s := int(d.Round(time.Second) / time.Second)
	return fmt.Sprintf("%02d:%02d", s/60, s%60)
}

func serverCommand() *cli.Command {
	return &cli.Command{
		Name:  "server",
		Usage: "change a real server of the running tether",
		Subcommands: []*cli.Command{{
			Name:      "set",
			Usage:     "set a server's weight, drain it, take it down or bring it up, at once and until the next reload",
			ArgsUsage: "SERVICE SERVER",
			Description: "--weight N   a new weight (0..65535)\n" +
				"--drain      weight 0: its clients stay, no new ones (quiescent)\n" +
				"--down       no clients; its templates are dropped and its clients rescheduled\n" +
				"--up         undo --drain and --down (health checks still apply)",
			Flags: append(adminFlags(),
				&cli.IntFlag{Name: "weight", Usage: "new weight"},
				&cli.BoolFlag{Name: "drain"}, &cli.BoolFlag{Name: "down"}, &cli.BoolFlag{Name: "up"}),
			Action: func(c *cli.Context) error {
				const usage = "tether server set SERVICE SERVER --weight N | --drain | --down | --up"
				if c.NArg() < 2 {
					return cli.Exit(usage, 2)
				}
				if err := flagsAfterArgs(c, 2); err != nil {
					return cli.Exit(fmt.Sprintf("%s (%v)", usage, err), 2)
				}
				req := api.ServerRequest{Service: c.Args().Get(0), Server: c.Args().Get(1)}
				req.Drain, req.Down, req.Up = c.Bool("drain"), c.Bool("down"), c.Bool("up")
				if c.IsSet("weight") {
					w := c.Int("weight")
					req.Weight = &w
				}
				cl, ctx, cancel, err := adminClient(c)
				if err != nil {
					return err
				}
				defer cancel()
				if err := cl.SetServer(ctx, req); err != nil {
					return cli.Exit(err.Error(), 1)
				}
				fmt.Fprintf(c.App.Writer, "%s %s: done\n", req.Service, req.Server)
				return nil
			},
		}},
	}
}

func reloadCommand() *cli.Command {
	return &cli.Command{
		Name:  "reload",
		Usage: "reload the running tether's configuration file (as SIGHUP) and report the result",
		Flags: adminFlags(),
		Action: func(c *cli.Context) error {
			cl, ctx, cancel, err := adminClient(c)
			if err != nil {
				return err
			}
			defer cancel()
			res, err := cl.Reload(ctx)
			if err != nil {
				return cli.Exit("reload refused; the running configuration stays:\n"+err.Error(), 1)
			}
			fmt.Fprintf(c.App.Writer, "reloaded: %d services\n", res.Services)
			if len(res.RestartNeeded) > 0 {
				fmt.Fprintf(c.App.Writer, "changed, and applied only at the next start: %s\n", strings.Join(res.RestartNeeded, ", "))
			}
			return nil
		},
	}
}

// flagsAfterArgs reads the flags written after the first n arguments
// (urfave/cli stops at the first argument, and `server set SERVICE SERVER
// --drain` is the natural order) into c.
func flagsAfterArgs(c *cli.Context, n int) error {
	args := c.Args().Slice()
	if len(args) <= n {
		return nil
	}
	fs := flag.NewFlagSet(c.Command.Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	for _, f := range c.Command.Flags {
		for _, name := range f.Names() {
			if _, isBool := f.(*cli.BoolFlag); isBool {
				fs.Bool(name, false, "")
			} else {
				fs.String(name, "", "")
			}
		}
	}
	if err := fs.Parse(args[n:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected %q", strings.Join(fs.Args(), " "))
	}
	var err error
	fs.Visit(func(f *flag.Flag) { err = errors.Join(err, c.Set(f.Name, f.Value.String())) })
	return err
}
