package proxy

import (
	"bufio"
	"encoding/json"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// accessLines are the access lines logged to l so far, decoded.
func accessLines(l *syncBuffer) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "access" {
			out = append(out, m)
		}
	}
	return out
}

// With the access log on, every ended TCP connection and UDP flow gets one
// line: service, client, server, bytes each way, duration, how it ended.
// Off, nothing is logged.
func TestAccessLog(t *testing.T) {
	b := startBackend(t, "a")
	u := udpBackend(t, "u")
	for _, on := range []bool{true, false} {
		var logs syncBuffer
		listen, ulisten := freeAddr(t), freeUDPAddr(t)
		al := ""
		if on {
			al = "access_log: {enabled: true}\n"
		}
		p := startProxy(t, mustConfig(t, al+"services:\n"+serviceYAML("web", listen, "rr", "", b)+
			"  - {name: dns, protocol: udp, listen: \""+ulisten+"\", limits: {idle_timeout: 200ms}, servers: [{address: \""+u.String()+"\"}]}\n"),
			Options{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
		c, err := net.Dial("tcp", listen)
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		r.ReadString('\n') // "a\n": 2 bytes out
		c.Write([]byte("hello\n"))
		r.ReadString('\n') // the echo: 6 bytes in, 6 more out
		c.Close()
		uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 6, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := askUDP(uc, netip.MustParseAddrPort(ulisten)); err != nil {
			t.Fatal(err)
		}
		uc.Close()
		want := 0
		if on {
			want = 2
		}
		var got []map[string]any
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if got = accessLines(&logs); len(got) >= want && (want > 0 || p.UDPFlows(netip.MustParseAddrPort(ulisten)) == 0) || time.Now().After(deadline) {
				break
			}
		}
		if len(got) != want {
			t.Fatalf("access log on=%v: %d lines, want %d: %v", on, len(got), want, got)
		}
		if !on {
			continue
		}
		byProto := map[string]map[string]any{}
		for _, l := range got {
			byProto[l["proto"].(string)] = l
		}
		tcp, udp := byProto["tcp"], byProto["udp"]
		if tcp == nil || tcp["service"] != "web" || tcp["server"] != b.addr.String() || tcp["bytes_in"] != 6.0 || tcp["bytes_out"] != 8.0 || tcp["end"] != "closed" {
			t.Errorf("tcp line %v", tcp)
		}
		if udp == nil || udp["service"] != "dns" || udp["client"] == nil || udp["bytes_in"] != 4.0 || udp["end"] != "idle timeout" {
			t.Errorf("udp line %v", udp)
		}
	}
}
