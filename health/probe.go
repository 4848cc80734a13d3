package health

import (
	"bytes"
	"cmp"
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/tetherlb/tether/config"
)

// Probe runs one check; nil means the server passed.
type Probe func(ctx context.Context) error

// Do runs f where the probe's sockets and commands must be made (the
// proxy's network namespace); nil runs f as is.
type Do func(f func() error) error

// maxBody is how much of an http reply is read for expect_body, and
// maxDigestBody how much for digest.
const (
	maxBody       = 64 << 10
	maxDigestBody = 4 << 20
)

// NewProbe builds hc's probe of server. hc must have passed config
// validation (and normalization, for its defaults).
func NewProbe(hc config.HealthCheck, server netip.AddrPort, do Do) (Probe, error) {
	if do == nil {
		do = func(f func() error) error { return f() }
	}
	target := server
	if hc.Port != 0 {
		target = netip.AddrPortFrom(server.Addr(), hc.Port)
	}
	dial := func(ctx context.Context, network string) (net.Conn, error) {
		var c net.Conn
		err := do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, target.String())
			return err
		})
		return c, err
	}
	switch hc.Type {
	case config.CheckTCP:
		return func(ctx context.Context) error {
			c, err := dial(ctx, "tcp")
			if err != nil {
				return err
			}
			return c.Close()
		}, nil
	case config.CheckHTTP, config.CheckHTTPS:
		return httpProbe(hc, target, dial)
	case config.CheckSMTP:
		return func(ctx context.Context) error { return smtpProbe(ctx, hc, dial) }, nil
	case config.CheckDNS:
		return func(ctx context.Context) error { return dnsProbe(ctx, hc, dial) }, nil
	case config.CheckUDP:
		return func(ctx context.Context) error { return udpProbe(ctx, hc, dial) }, nil
	case config.CheckExec:
		return func(ctx context.Context) error { return execProbe(ctx, hc, server, do) }, nil
	}
	return nil, fmt.Errorf("health check type %q: want one of %v", hc.Type, config.CheckTypes)
}

func httpProbe(hc config.HealthCheck, target netip.AddrPort, dial func(context.Context, string) (net.Conn, error)) (Probe, error) {
	lo, hi, err := config.ParseStatusRange(hc.ExpectStatus)
	if err != nil {
		return nil, err
	}
	scheme := "http://"
	var tc *tls.Config
	if hc.Type == config.CheckHTTPS {
		// keepalived's SSL_GET does not verify unless told to; SNI goes
		// out when named (Go sends none for an IP address).
		scheme, tc = "https://", &tls.Config{ServerName: cmp.Or(hc.SNI, hc.Host), InsecureSkipVerify: !hc.VerifyTLS}
	}
	url := scheme + target.String() + hc.Path
	return func(ctx context.Context) error {
		// A transport per check: no connection is kept between checks,
		// so each one proves that the server still accepts.
		tr := &http.Transport{DisableKeepAlives: true, TLSClientConfig: tc, DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dial(ctx, network)
		}}
		defer tr.CloseIdleConnections()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "tether-health-check")
		if hc.Host != "" {
			req.Host = hc.Host
		}
		resp, err := (&http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode < lo || resp.StatusCode > hi {
			return fmt.Errorf("GET %s: status %d, want %s", hc.Path, resp.StatusCode, hc.ExpectStatus)
		}
		if hc.ExpectBody == "" && hc.Digest == "" {
			return nil
		}
		// The digest covers the whole body, up to maxDigestBody; the
		// substring is looked for in its first maxBody bytes.
		limit := int64(maxBody)
		if hc.Digest != "" {
			limit = maxDigestBody + 1
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
		if err != nil {
			return fmt.Errorf("GET %s: reading the body: %w", hc.Path, err)
		}
		head := body[:min(len(body), maxBody)]
		if hc.ExpectBody != "" && !bytes.Contains(head, []byte(hc.ExpectBody)) {
			return fmt.Errorf("GET %s: the first %d bytes of the body lack %q", hc.Path, len(head), hc.ExpectBody)
		}
		if hc.Digest != "" {
			if len(body) > maxDigestBody {
				return fmt.Errorf("GET %s: the body is longer than the %d bytes a digest check reads", hc.Path, maxDigestBody)
			}
			sum := md5.Sum(body)
			if got := hex.EncodeToString(sum[:]); !strings.EqualFold(got, hc.Digest) {
				return fmt.Errorf("GET %s: body digest %s, want %s", hc.Path, got, hc.Digest)
			}
		}
		return nil
	}, nil
}

func udpProbe(ctx context.Context, hc config.HealthCheck, dial func(context.Context, string) (net.Conn, error)) error {
	c, err := dial(ctx, "udp")
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write([]byte(hc.Send)); err != nil {
		return err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf) // a port with no listener: ICMP, ECONNREFUSED
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return errors.New("no reply before the timeout")
		}
		return err
	}
	if hc.Expect != "" && !bytes.Contains(buf[:n], []byte(hc.Expect)) {
		return fmt.Errorf("reply %q lacks %q", truncate(buf[:n]), hc.Expect)
	}
	return nil
}

func execProbe(ctx context.Context, hc config.HealthCheck, server netip.AddrPort, do Do) error {
	cmd := exec.CommandContext(ctx, hc.Command[0], hc.Command[1:]...)
	cmd.Env = append(os.Environ(),
		"TETHER_SERVER="+server.String(),
		"TETHER_SERVER_ADDR="+server.Addr().String(),
		"TETHER_SERVER_PORT="+strconv.Itoa(int(server.Port())))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second // a child that keeps the pipes open
	// Started where the proxy's sockets are made, so that the command
	// sees the proxy's network namespace.
	if err := do(cmd.Start); err != nil {
		return err
	}
	if err := cmd.Wait(); err != nil {
		if s := strings.TrimSpace(out.String()); s != "" {
			return fmt.Errorf("%s: %w: %s", hc.Command[0], err, truncate([]byte(s)))
		}
		return fmt.Errorf("%s: %w", hc.Command[0], err)
	}
	return nil
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "…"
	}
	return string(b)
}
