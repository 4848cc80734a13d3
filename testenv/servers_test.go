package testenv

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestHTTPAndUDPNameServers(t *testing.T) {
	e := Start(t, Spec{Backends: 2, Label: "srv"})
	if _, err := e.Backends[1].ServeHTTP(8081); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Backends[1].ServeUDP(5353); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// HTTP from the client host, through the load balancer's routing.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return e.Clients[0].Dial(ctx, network, ClientAddr(0), addr)
		},
	}}
	r, err := client.Get("http://" + BackendAddr(1).String() + ":8081/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if strings.TrimSpace(string(body)) != "backend1" {
		t.Errorf("HTTP answered %q, want backend1", body)
	}
	// UDP likewise.
	if name, err := e.Clients[0].AskUDP(ctx, ClientAddr(0), netip.AddrPortFrom(BackendAddr(1), 5353)); err != nil || name != "backend1" {
		t.Errorf("UDP answered %q, %v; want backend1", name, err)
	}
}
