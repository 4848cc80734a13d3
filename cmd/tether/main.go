package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"

	"github.com/urfave/cli/v2"
)

// Stamped at build time:
//
//	go build -tags urfave_cli_no_docs -ldflags "-X main.version=v0.1.0 -X main.commit=$(git rev-parse --short HEAD)" ./cmd/tether
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	if err := newApp(os.Stdout, os.Stderr).Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "tether:", err)
		code := 1
		var ec cli.ExitCoder
		if errors.As(err, &ec) && ec.ExitCode() != 0 {
			code = ec.ExitCode()
		}
		os.Exit(code)
	}
}

// newApp builds the command tree; tests run it with their own writers.
func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:  "tether",
		Usage: "L4 load balancer that keeps each client on the same real server",
		Description: "tether balances TCP and UDP across real servers with LVS-style persistence\n" +
			"(a client, grouped by a netmask, stays on one server for a timeout) and\n" +
			"firewall-mark services (one mark spans many ports), without IPVS.",
		Writer:    stdout,
		ErrWriter: stderr,
		// main prints errors and picks the exit code; cli must not exit.
		ExitErrHandler: func(*cli.Context, error) {},
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log format: text or json", EnvVars: []string{"TETHER_LOG_FORMAT"}},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log level: debug, info, warn or error", EnvVars: []string{"TETHER_LOG_LEVEL"}},
		},
		Before: func(c *cli.Context) error {
			_, err := newLogger(c.App.ErrWriter, c.String("log-format"), c.String("log-level"))
			return err
		},
		Commands: []*cli.Command{
			demoCommand(),
			runCommand(),
			checkCommand(),
			lsCommand(),
			affinityCommand(),
			clusterCommand(),
			serverCommand(),
			reloadCommand(),
			importCommand(),
			nftCommand(),
			testenvCommand(),
			versionCommand(),
		},
		HideVersion: true,
	}
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version, commit and Go version tether was built with",
		Action: func(c *cli.Context) error {
			fmt.Fprintf(c.App.Writer, "tether %s (commit %s, %s %s/%s)\n",
				version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}
