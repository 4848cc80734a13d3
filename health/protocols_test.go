package health

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/internal/testserver"
)

// smtpServer greets with greeting and answers HELO with 250 when the name
// is "good", 550 otherwise.
func smtpServer(t *testing.T, greeting string) netip.AddrPort {
	return testserver.TCP(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "%s\r\n", greeting)
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		if strings.TrimSpace(line) == "HELO good" {
			fmt.Fprintf(c, "250 hello\r\n")
		} else {
			fmt.Fprintf(c, "550 go away\r\n")
		}
	})
}

// dnsServer answers ok.example. with NOERROR and anything else NXDOMAIN.
func dnsServer(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		r := new(dns.Msg)
		r.SetReply(q)
		if q.Question[0].Name != "ok.example." {
			r.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(r)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// smtp and dns checks, as keepalived's SMTP_CHECK and DNS_CHECK.
func TestSMTPAndDNSProbes(t *testing.T) {
	mail, grumpy, ns, closed := smtpServer(t, "220 mail.example ESMTP"), smtpServer(t, "554 no service"), dnsServer(t), closedPort(t)
	for _, tc := range []struct {
		name    string
		hc      config.HealthCheck
		server  netip.AddrPort
		wantErr string
	}{
		{"smtp ok", with("smtp", func(h *config.HealthCheck) { h.Helo = "good" }), mail, ""},
		{"smtp helo refused", with("smtp", func(h *config.HealthCheck) { h.Helo = "bad" }), mail, `550 "go away"`},
		{"smtp greeting refused", with("smtp", func(h *config.HealthCheck) { h.Helo = "good" }), grumpy, `554 "no service"`},
		{"smtp refused", with("smtp", func(h *config.HealthCheck) { h.Helo = "good" }), closed, "refused"},
		{"dns ok", with("dns", func(h *config.HealthCheck) { h.QueryName, h.QueryType = "ok.example", "A" }), ns, ""},
		{"dns nxdomain", with("dns", func(h *config.HealthCheck) { h.QueryName, h.QueryType = "gone.example", "SOA" }), ns, "NXDOMAIN"},
		{"dns refused", with("dns", func(h *config.HealthCheck) { h.QueryName, h.QueryType = "ok.example", "A" }), closed, "refused"},
	} {
		t.Run(tc.name, func(t *testing.T) { runProbe(context.Background(), t, tc.hc, tc.server, tc.wantErr) })
	}
}
