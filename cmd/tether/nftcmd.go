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
		Usage: "show or remove the nftables rules tether applies for firewall-mark services",
		Subcommands: []*cli.Command{{
			Name:  "show",
			Usage: "print the ruleset a configuration makes, in nft syntax (loadable with nft -f)",
			Flags: []cli.Flag{configFlag},
			Action: func(c *cli.Context) error {
				f, err := config.Load(c.String("config"))
				if err != nil {
					return cli.Exit(err.Error(), 1)
				}
				if len(f.Marks) == 0 {
					return cli.Exit(c.String("config")+": no marks, so tether applies no nftables rules", 1)
				}
				fmt.Fprint(c.App.Writer, nft.Ruleset{Marks: f.MarkSet(), TProxyPort: f.TProxyPort}.Show())
				return nil
			},
		}, {
			Name:  "flush",
			Usage: "remove tether's table (inet tether) from this network namespace",
			Action: func(c *cli.Context) error {
				removed, err := nft.Flush()
				if err != nil {
					if errors.Is(err, os.ErrPermission) {
						return cli.Exit("tether nft flush needs CAP_NET_ADMIN (root): "+err.Error(), 1)
					}
					return err
				}
				if removed {
					fmt.Fprintln(c.App.Writer, "removed table inet", nft.TableName)
				} else {
					fmt.Fprintln(c.App.Writer, "no table inet", nft.TableName, "here")
				}
				return nil
			},
		}},
	}
}
