package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/nftables"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/hostnet"
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
					rs := nft.Ruleset{Marks: f.MarkSet, TProxyPort: f.TProxyPort, Direct: nft.DirectorMarks(f), ACLs: nft.MarkACLs(f)}
					// As tether would decide on this host: the classes
					// whose addresses are local here are listened for.
					local, _ := hostnet.LocalAddrs()
					listened := nft.ListenedClasses(f, func(a netip.Addr) bool { return local[a] })
					for _, cl := range f.MarkSet.Classes {
						if pairs, ok := listened[cl.Mark]; ok {
							rs.Listened = append(rs.Listened, cl.Mark)
							fmt.Fprintf(c.App.Writer, "# class %q: tether listens on %s (local addresses here; tproxy: always TPROXYs it)\n", cl.Name, joinPairs(pairs))
						}
					}
					fmt.Fprint(c.App.Writer, rs.Show())
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
			Name:  "templates",
			Usage: "print the director's kernel template maps as the kernel holds them: client, server, time left (busy: open flows)",
			Action: func(c *cli.Context) error {
				conn, err := nftables.New()
				if err != nil {
					return err
				}
				ts, err := nft.ReadLiveTemplates(conn)
				if err != nil {
					if errors.Is(err, os.ErrPermission) {
						return cli.Exit("tether nft templates needs CAP_NET_ADMIN (root): "+err.Error(), 1)
					}
					return err
				}
				return printLiveTemplates(c.App.Writer, ts)
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

// printLiveTemplates prints the kernel's template map elements, sorted.
func printLiveTemplates(w io.Writer, ts []nft.LiveTemplate) error {
	slices.SortFunc(ts, func(a, b nft.LiveTemplate) int {
		return cmp.Or(strings.Compare(a.Map, b.Map), a.Client.Compare(b.Client))
	})
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MAP\tCLIENT\tSERVER\tEXPIRES")
	for _, t := range ts {
		exp := "busy"
		if t.Expires > 0 {
			exp = t.Expires.Round(time.Second).String()
		}
		server := t.Server.String()
		if t.Server.Port() == 0 {
			server = t.Server.Addr().String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Map, t.Client, server, exp)
	}
	return tw.Flush()
}

func joinPairs(pairs []netip.AddrPort) string {
	s := make([]string, len(pairs))
	for i, p := range pairs {
		s[i] = p.String()
	}
	return strings.Join(s, " ")
}
