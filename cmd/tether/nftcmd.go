package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/nft"
	"github.com/urfave/cli/v2"
)

func nftCommand() *cli.Command {
	return &cli.Command{
		Name:  "nft",
		Usage: "show or remove the nftables rules tether applies for firewall-mark and director services",
		Subcommands: []*cli.Command{{
			Name:  "show",
			Usage: "print the ruleset a configuration makes, in nft syntax (loadable with nft -f)",
			Flags: []cli.Flag{configFlag},
			Action: func(c *cli.Context) error {
				f, err := config.Load(c.String("config"))
				if err != nil {
					return cli.Exit(err.Error(), 1)
				}
				director := nft.ShowDirector(f)
				if len(f.Marks) == 0 && director == "" {
					return cli.Exit(c.String("config")+": no marks and no director services, so tether applies no nftables rules", 1)
				}
				if len(f.Marks) > 0 {
					fmt.Fprint(c.App.Writer, nft.Ruleset{Marks: f.MarkSet, TProxyPort: f.TProxyPort, Direct: nft.DirectorMarks(f), ACLs: nft.MarkACLs(f)}.Show())
				}
				if director != "" {
					if len(f.Marks) > 0 {
						fmt.Fprintln(c.App.Writer)
					}
					fmt.Fprint(c.App.Writer, director)
				}
				return nil
			},
		}, {
			Name:  "flush",
			Usage: "remove tether's tables (inet tether, ip/ip6 tether, and the director's NAT anchors ip/ip6 tether_nat_anchor) from this network namespace",
			Action: func(c *cli.Context) error {
				removed, err := nft.Flush()
				if err != nil {
					if errors.Is(err, os.ErrPermission) {
						return cli.Exit("tether nft flush needs CAP_NET_ADMIN (root): "+err.Error(), 1)
					}
					return err
				}
				for _, t := range removed {
					fmt.Fprintln(c.App.Writer, "removed table", t)
				}
				if len(removed) == 0 {
					fmt.Fprintln(c.App.Writer, "no table of tether's here")
				}
				return nil
			},
		}},
	}
}
