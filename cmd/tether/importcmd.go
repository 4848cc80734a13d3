package main

import (
	"fmt"
	"io"
	"os"

	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/migrate"
	"github.com/urfave/cli/v2"
)

func importCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "iptables", Usage: "iptables-save (-t mangle) output whose MARK rules give firewall-mark services their classes"},
		&cli.StringFlag{Name: "mode", Usage: "run every imported service in this data path: proxy or director (default: director, IPVS's NAT)"},
	}
	// impFile, if not nil, imports from a named file, which can include others.
	run := func(source string, imp func(rules, mangle io.Reader) (*migrate.Result, error), impFile func(path string, mangle io.Reader) (*migrate.Result, error)) cli.ActionFunc {
		return func(c *cli.Context) error {
			var in io.Reader = c.App.Reader
			if in == nil {
				in = os.Stdin
			}
			name := "stdin"
			if c.NArg() > 0 {
				f, err := os.Open(c.Args().First())
				if err != nil {
					return cli.Exit(err.Error(), 2)
				}
				defer f.Close()
				in, name = f, c.Args().First()
			}
			var mangle io.Reader
			if p := c.String("iptables"); p != "" {
				f, err := os.Open(p)
				if err != nil {
					return cli.Exit("--iptables: "+err.Error(), 2)
				}
				defer f.Close()
				mangle = f
			}
			mode := config.Mode(c.String("mode"))
			if mode != "" && mode != config.ModeProxy && mode != config.ModeDirector {
				return cli.Exit(fmt.Sprintf("--mode %q: want proxy or director", mode), 2)
			}
			var r *migrate.Result
			var err error
			if impFile != nil && c.NArg() > 0 {
				r, err = impFile(name, mangle)
			} else {
				r, err = imp(in, mangle)
			}
			if err != nil {
				return cli.Exit(fmt.Sprintf("%s: %v", name, err), 1)
			}
			if mode != "" {
				for i := range r.Config.Services {
					if !r.Config.Services[i].OnePacket {
						r.Config.Services[i].Mode = mode
					}
				}
			}
			out, err := r.YAML(source + " " + name)
			if err != nil {
				return err
			}
			c.App.Writer.Write(out)
			for _, n := range r.Notes {
				fmt.Fprintf(c.App.ErrWriter, "%s: %s\n", name, n)
			}
			// What tether check would say, so that a script knows.
			if _, err := config.Parse("output", out); err != nil {
				return cli.Exit("the imported configuration does not pass tether check yet:\n"+err.Error(), 1)
			}
			if r.Unreadable() {
				return cli.Exit("some lines could not be read (see above); they are not in the configuration", 1)
			}
			return nil
		}
	}
	return &cli.Command{
		Name:  "import",
		Usage: "turn ipvsadm rules or keepalived.conf into a tether configuration (on stdout)",
		Description: "Reads FILE or stdin. Notes on what has no tether equivalent go to stderr, with\n" +
			"line numbers, and into the output as comments. Exit 1 if a line could not be read\n" +
			"or the result does not pass tether check (e.g. a firewall-mark service without\n" +
			"--iptables); the configuration is printed anyway.",
		Subcommands: []*cli.Command{{
			Name:      "ipvsadm",
			Usage:     "import the rules ipvsadm -S -n prints",
			ArgsUsage: "[FILE]",
			Flags:     flags,
			Action:    run("ipvsadm -S", migrate.IPVSAdm, nil),
		}, {
			Name:      "keepalived",
			Usage:     "import the virtual_server blocks of keepalived.conf, following its includes",
			ArgsUsage: "[FILE]",
			Flags:     flags,
			Action:    run("keepalived.conf", migrate.Keepalived, migrate.KeepalivedFile),
		}},
	}
}
