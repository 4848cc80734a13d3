package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/testenv"
)

// serveHeaders answers each connection of ln with the PROXY header it
// starts with (version, source, destination) and, with line, the client's
// first line after it; then closes.
func serveHeaders(ln net.Listener, line bool) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			r := bufio.NewReader(c)
			h, err := proxyproto.Read(r)
			if err != nil {
				fmt.Fprintf(c, "no header: %v\n", err)
				return
			}
			after := ""
			if line {
				l, _ := r.ReadString('\n')
				after = " " + strings.TrimSpace(l)
			}
			fmt.Fprintf(c, "v%d %s %s%s\n", h.Version, h.SourceAddr, h.DestinationAddr, after)
		}()
	}
}

// proxyServer is a backend on loopback that answers with the PROXY header
// it gets (serveHeaders).
func proxyServer(t *testing.T, network, addr string) string {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("no %s loopback: %v", network, err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveHeaders(ln, false)
	return ln.Addr().String()
}

// send_proxy puts a PROXY header in front of the client's bytes, with the
// client's address and port and the VIP:port it connected to, in either
// version, IPv4 and IPv6; a server's own setting replaces the service's.
func TestSendProxy(t *testing.T) {
	for _, tc := range []struct {
		network, lo, client string
		service, server     string
		want                string // the version the server must see
	}{
		{"tcp4", "127.0.0.1", "127.1.0.5", "v1", "", "v1"},
		{"tcp4", "127.0.0.1", "127.1.0.6", "v2", "", "v2"},
		{"tcp4", "127.0.0.1", "127.1.0.7", "v2", "v1", "v1"},
		{"tcp6", "::1", "::1", "v2", "", "v2"},
		{"tcp6", "::1", "::1", "v1", "", "v1"},
	} {
		t.Run(fmt.Sprintf("%s-%s-%s", tc.network, tc.service, tc.server), func(t *testing.T) {
			backend := proxyServer(t, tc.network, net.JoinHostPort(tc.lo, "0"))
			ln, err := net.Listen(tc.network, net.JoinHostPort(tc.lo, "0"))
			if err != nil {
				t.Fatal(err)
			}
			listen := ln.Addr().String()
			ln.Close()
			server := "{address: \"" + backend + "\"}"
			if tc.server != "" {
				server = "{address: \"" + backend + "\", send_proxy: " + tc.server + "}"
			}
			startProxy(t, mustConfig(t, fmt.Sprintf("services:\n  - {name: pp, listen: \"%s\", send_proxy: %s, servers: [%s]}\n", listen, tc.service, server)), Options{})
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(tc.client)}}
			c, err := d.Dial(tc.network, listen)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			want := fmt.Sprintf("%s %s %s", tc.want, c.LocalAddr(), listen)
			if got := readLine(t, c); got != want {
				t.Errorf("the server saw %q, want %q", got, want)
			}
		})
	}
}

// For a mark service the header names the client's original destination:
// the VIP and the port it connected to, which TPROXY keeps as the accepted
// socket's local address (not the transparent listener's port).
func TestSendProxyMarkService(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 1, Backends: 1, Label: "ppmark"})
	ln, err := env.Backends[0].Listen("tcp", ":443")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveHeaders(ln, false)
	startInLB(t, env, fmt.Sprintf("marks:\n  - {name: web, mark: 0x100, addresses: [%s], ports: [80, 443]}\nservices:\n  - {name: web, fwmark: 0x100, send_proxy: v2, servers: [{address: %s}]}\n",
		testenv.VIP, testenv.BackendAddr(0)), Options{})
	client := env.Clients[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	vip := netip.AddrPortFrom(testenv.VIP, 443)
	c, err := client.Dial(ctx, "tcp", client.Addr(0), vip.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := readLine(t, c), fmt.Sprintf("v2 %s %s", c.LocalAddr(), vip); got != want {
		t.Errorf("the server saw %q, want %q", got, want)
	}
}

// accept_proxy: a connection from a trusted balancer starts with a PROXY
// header (v1 or v2), and its client is the one the header names: the
// template is that client's, and send_proxy passes it on; the bytes after
// the header reach the server intact. A trusted source without a valid
// header is refused; an untrusted one is its own client.
func TestAcceptProxy(t *testing.T) {
	// The server answers with the header tether sends and the client's
	// first line after it.
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sln.Close()
	go serveHeaders(sln, true)
	backend := sln.Addr().String()
	listen := freeAddr(t)
	p := startProxy(t, mustConfig(t, fmt.Sprintf("services:\n  - {name: pp, listen: %s, accept_proxy: [127.7.0.0/16], send_proxy: v1, persistence: {}, servers: [{address: %s}]}\n", listen, backend)), Options{})
	ask := func(from string, header *proxyproto.Header) (string, error) {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", listen)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		var b bytes.Buffer
		if header != nil {
			header.WriteTo(&b)
		}
		b.WriteString("hello\n") // in the same segment as the header
		if _, err := c.Write(b.Bytes()); err != nil {
			return "", err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), err
	}
	real := &net.TCPAddr{IP: net.ParseIP("198.51.100.7"), Port: 40000}
	dst, _ := net.ResolveTCPAddr("tcp", listen)
	for _, version := range []byte{1, 2} {
		got, err := ask("127.7.0.1", proxyproto.HeaderProxyFromAddrs(version, real, dst))
		if want := "v1 198.51.100.7:40000 " + listen + " hello"; err != nil || got != want {
			t.Errorf("v%d header from a trusted source: the server saw %q (%v), want %q", version, got, err, want)
		}
	}
	if ts, _ := p.Templates(api.TemplateFilter{}); len(ts) != 1 || ts[0].Client != "198.51.100.7/32" {
		t.Errorf("templates %+v: want the header's client's only", ts)
	}
	if got, err := ask("127.7.0.2", nil); err == nil {
		t.Errorf("a trusted source without a header was served: %q", got)
	}
	if got, err := ask("127.8.0.1", nil); err != nil || !strings.HasPrefix(got, "v1 127.8.0.1:") {
		t.Errorf("an untrusted source: the server saw %q (%v), want it as its own client", got, err)
	}
}
