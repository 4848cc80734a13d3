package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/tetherlb/tether/testenv"
	"github.com/urfave/cli/v2"
)

// cliLabel marks the topology `tether testenv up` builds.
const cliLabel = "cli"

func testenvCommand() *cli.Command {
	return &cli.Command{
		Name:  "testenv",
		Usage: "build network-namespace test hosts to poke at by hand (root)",
		Subcommands: []*cli.Command{{
			Name:  "up",
			Usage: "build client hosts, a load-balancer host and backends",
			Flags: []cli.Flag{
				&cli.IntFlag{Name: "clients", Value: 1, Usage: "client hosts"},
				&cli.IntFlag{Name: "addrs", Value: 8, Usage: "source addresses per client host"},
				&cli.IntFlag{Name: "backends", Value: 3, Usage: "backend hosts"},
			},
			Action: func(c *cli.Context) error {
				if m := testenv.Missing(); m != "" {
					return cli.Exit(m, 2)
				}
				if _, err := testenv.Find(cliLabel, "lb"); err == nil || !errors.Is(err, testenv.ErrNoHost) {
					return cli.Exit("a testenv topology is up already: tether testenv down first", 1)
				}
				for _, f := range []string{"clients", "addrs", "backends"} {
					if v := c.Int(f); v < 1 || v > 250 {
						return cli.Exit(fmt.Sprintf("--%s %d: want 1..250", f, v), 1)
					}
				}
				env, err := testenv.New(testenv.Spec{Clients: c.Int("clients"), AddrsPerClient: c.Int("addrs"), Backends: c.Int("backends"), Label: cliLabel})
				if err != nil {
					return err
				}
				w := c.App.Writer
				fmt.Fprintf(w, "host       namespace              addresses\n")
				for _, h := range env.Hosts() {
					fmt.Fprintf(w, "%-10s %-22s %s\n", h.Name, h.NS, addrList(h))
				}
				fmt.Fprintf(w, "\nVIP %s is on lb. Try:\n  tether testenv exec lb -- ip addr\n  tether testenv exec client0 -- ping -c1 %s\n  tether testenv down\n", testenv.VIP, testenv.BackendAddr(0))
				env.Keep()
				return nil
			},
		}, {
			Name:      "exec",
			Usage:     "run a command in a host: tether testenv exec HOST -- CMD [ARGS]",
			ArgsUsage: "HOST -- CMD [ARGS]",
			Action: func(c *cli.Context) error {
				args := c.Args().Slice()
				if len(args) > 0 && args[0] == "--" {
					args = args[1:]
				}
				if len(args) < 2 {
					return cli.Exit("usage: tether testenv exec HOST -- CMD [ARGS]", 1)
				}
				host, argv := args[0], args[1:]
				if argv[0] == "--" {
					argv = argv[1:]
				}
				if len(argv) == 0 {
					return cli.Exit("usage: tether testenv exec HOST -- CMD [ARGS]", 1)
				}
				ns, err := testenv.Find(cliLabel, host)
				if err != nil {
					return cli.Exit(err.Error(), 1)
				}
				return testenv.Exec(ns, argv)
			},
		}, {
			Name:  "down",
			Usage: "remove the hosts of testenv up and what crashed test runs left",
			Action: func(c *cli.Context) error {
				names, err := testenv.Leftovers()
				if err != nil {
					return err
				}
				for _, n := range names {
					if err := testenv.Remove(n); err != nil {
						return err
					}
					fmt.Fprintln(c.App.Writer, "removed", n)
				}
				if len(names) == 0 {
					fmt.Fprintln(c.App.Writer, "nothing to remove")
				}
				return nil
			},
		}},
	}
}

func addrList(h *testenv.Host) string {
	var s []string
	for i, a := range h.Addrs {
		if i == 4 && len(h.Addrs) > 5 {
			s = append(s, fmt.Sprintf("... (%d in all)", len(h.Addrs)))
			break
		}
		s = append(s, a.String())
	}
	return strings.Join(s, " ")
}
