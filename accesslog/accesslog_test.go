package accesslog

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
)

// A line carries every field; a connection Begin did not take writes none.
func TestWrite(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	client, server := netip.MustParseAddrPort("127.0.0.9:4000"), netip.MustParseAddrPort("198.18.1.2:80")
	if !Begin(false, 1).IsZero() || !Begin(true, 0).IsZero() || Begin(true, 1).IsZero() {
		t.Fatal("Begin: off, or a sample of 0, must take nothing; on with 1, everything")
	}
	skipped := &Counts{}
	Write(log, "web", "tcp", client, server, skipped, "closed")
	if buf.Len() != 0 {
		t.Fatalf("a connection not taken was logged: %s", buf.String())
	}
	c := &Counts{Start: Begin(true, 1)}
	c.In.Add(10)
	c.Out.Add(20)
	Write(log, "web", "tcp", client, netip.AddrPort{}, c, "no server")
	line := buf.String()
	for _, want := range []string{"msg=access", "service=web", "proto=tcp", "client=127.0.0.9:4000", "server=\"\"", "bytes_in=10", "bytes_out=20", "duration=", "end=\"no server\""} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %s", line, want)
		}
	}
}
