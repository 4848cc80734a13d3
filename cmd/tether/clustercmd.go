package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/tetherlb/tether/admin"
	"github.com/tetherlb/tether/api"
	"github.com/urfave/cli/v2"
)

func clusterCommand() *cli.Command {
	return &cli.Command{
		Name:  "cluster",
		Usage: "the instances sharing templates with the running tether",
		Subcommands: []*cli.Command{{
			Name:  "members",
			Usage: "list the instances: name, address, state, templates, holds, time since last heard",
			Flags: append(adminFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON for machines"}),
			Action: func(c *cli.Context) error {
				cl, ctx, cancel, err := adminClient(c)
				if err != nil {
					return err
				}
				defer cancel()
				st, err := cl.Cluster(ctx)
				if err != nil {
					return cli.Exit(err.Error(), 1)
				}
				if c.Bool("json") {
					return printJSON(c.App.Writer, st)
				}
				printMembers(c.App.Writer, st)
				return nil
			},
		}},
	}
}

// printMembers prints the cluster as a table.
func printMembers(w io.Writer, st api.ClusterStatus) {
	ready := "ready"
	if !st.Ready {
		ready = "not ready (waiting for a peer's full state)"
	}
	fmt.Fprintf(w, "Cluster: %d instances, %s, %d broadcasts queued, %d messages refused\n", len(st.Members), ready, st.QueueDepth, st.Dropped)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tSTATE\tTEMPLATES\tHOLDS\tLAG")
	for _, m := range st.Members {
		name, lag := m.Name, m.Lag.Round(time.Millisecond).String()
		if m.Self {
			name, lag = name+" (this one)", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", name, m.Addr, m.State, m.Templates, m.Holds, lag)
	}
	tw.Flush()
}

// noCluster says err is the API's answer for an instance in no cluster.
func noCluster(err error) bool {
	var ae *admin.APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}
