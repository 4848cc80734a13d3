package health

import (
	"context"
	"fmt"
	"net"
	"net/textproto"
	"strings"

	"github.com/miekg/dns"
	"github.com/tetherlb/tether/config"
)

// smtpProbe is keepalived's SMTP_CHECK: a 2xx greeting, a 250 to HELO,
// then QUIT, so that the server logs a clean session.
func smtpProbe(ctx context.Context, hc config.HealthCheck, dial func(context.Context, string) (net.Conn, error)) error {
	c, err := dial(ctx, "tcp")
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	tp := textproto.NewConn(c)
	if _, _, err := tp.ReadResponse(2); err != nil {
		return fmt.Errorf("smtp greeting: %w", err)
	}
	id, err := tp.Cmd("HELO %s", hc.Helo)
	if err != nil {
		return err
	}
	tp.StartResponse(id)
	_, _, err = tp.ReadResponse(250)
	tp.EndResponse(id)
	if err != nil {
		return fmt.Errorf("smtp HELO %s: %w", hc.Helo, err)
	}
	tp.Cmd("QUIT") // the answer does not matter
	return nil
}

// dnsProbe is keepalived's DNS_CHECK: a query over UDP that must come back
// answered, with the query's id and question, and rcode NOERROR.
func dnsProbe(ctx context.Context, hc config.HealthCheck, dial func(context.Context, string) (net.Conn, error)) error {
	c, err := dial(ctx, "udp")
	if err != nil {
		return err
	}
	defer c.Close()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(hc.QueryName), dns.StringToType[strings.ToUpper(hc.QueryType)])
	dc := &dns.Conn{Conn: c}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if err := dc.WriteMsg(q); err != nil {
		return err
	}
	r, err := dc.ReadMsg()
	if err != nil {
		return fmt.Errorf("dns %s %s: %w", hc.QueryName, hc.QueryType, err)
	}
	switch {
	case r.Id != q.Id || !r.Response || len(r.Question) != 1 || r.Question[0] != q.Question[0]:
		return fmt.Errorf("dns %s %s: the reply is not to the query", hc.QueryName, hc.QueryType)
	case r.Rcode != dns.RcodeSuccess:
		return fmt.Errorf("dns %s %s: %s", hc.QueryName, hc.QueryType, dns.RcodeToString[r.Rcode])
	}
	return nil
}
