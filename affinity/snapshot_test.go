package affinity

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// snapFixture is a table with templates of known ages, on servers p's:
// client 1 idle for 100 s, client 2 open, client 3 idle for 250 s, and
// one IPv6 client and one mark service.
func snapFixture(t *testing.T) (*Table, *fakeClock, *rrPicker, []byte) {
	t.Helper()
	p := newPicker(3)
	tb, ref, clk := newTestTable(Options{}, ServiceConfig{Timeout: 300 * time.Second}, p)
	mark := tb.SetService(MarkService(7), ServiceConfig{Timeout: time.Hour})
	for _, s := range p.servers {
		tb.SetServer(mark, netip.AddrPortFrom(s.Addr(), 0), ServerUp)
	}
	markPicker := &rrPicker{servers: []netip.AddrPort{netip.AddrPortFrom(p.servers[2].Addr(), 0)}}
	tb.Release(mustBind(t, tb, ref, client(3), p))
	clk.Advance(150 * time.Second)
	tb.Release(mustBind(t, tb, ref, client(1), p))
	tb.Release(mustBind(t, tb, ref, netip.MustParseAddr("2001:db8::7"), p))
	tb.Release(mustBind(t, tb, mark, client(9), markPicker))
	mustBind(t, tb, ref, client(2), p) // open at the snapshot
	clk.Advance(100 * time.Second)
	var buf bytes.Buffer
	if err := tb.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	return tb, clk, p, buf.Bytes()
}

// restoreInto makes a fresh table with the same services and restores b,
// after the given downtime.
func restoreInto(t *testing.T, p *rrPicker, clk *fakeClock, b []byte, down time.Duration) (*Table, RestoreStats, error) {
	t.Helper()
	clk.Advance(down)
	o := Options{Now: clk.Now, SweepInterval: -1}
	tb := New(o)
	ref := tb.SetService(svcWeb, ServiceConfig{Timeout: 300 * time.Second})
	mark := tb.SetService(MarkService(7), ServiceConfig{Timeout: time.Hour})
	for _, s := range p.servers {
		tb.SetServer(ref, s, ServerUp)
		tb.SetServer(mark, netip.AddrPortFrom(s.Addr(), 0), ServerUp)
	}
	t.Cleanup(func() { tb.Close() })
	st, err := tb.ReadSnapshot(bytes.NewReader(b))
	return tb, st, err
}

// remaining maps "service client server" to the time left; a template with
// open connections is written as just used, so it has its full timeout.
func remaining(tb *Table) map[string]time.Duration {
	m := map[string]time.Duration{}
	for _, tp := range tb.List(Filter{}) {
		m[tp.Service.String()+" "+tp.Client.String()+" "+tp.Server.String()] = tp.Remaining
	}
	return m
}

func remainingOf(tb *Table, c netip.Addr) time.Duration {
	ls := tb.List(Filter{Service: &svcWeb, Client: c})
	if len(ls) != 1 {
		return -1
	}
	return ls[0].Remaining
}

func TestSnapshotRoundTrip(t *testing.T) {
	src, clk, p, b := snapFixture(t)
	defer src.Close()
	before := remaining(src)
	if remainingOf(src, client(2)) != 300*time.Second {
		t.Fatalf("fixture: the open template should show its full timeout")
	}

	dst, st, err := restoreInto(t, p, clk, b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(RestoreStats{Restored: 5}, st); diff != "" {
		t.Errorf("RestoreStats (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(before, remaining(dst)); diff != "" {
		t.Errorf("templates after restore (-want +got):\n%s", diff)
	}
	// Restored templates are honoured.
	ref, _ := dst.Lookup(svcWeb)
	if l := mustBind(t, dst, ref, client(1), p); !l.Hit {
		t.Errorf("restored template was not honoured")
	}
}

func TestSnapshotCountsDowntimeAndDropsExpired(t *testing.T) {
	src, clk, p, b := snapFixture(t)
	defer src.Close()
	// 120 s down: client 3 (idle 250 s) expires, client 1 (idle 100 s) has 80 s left.
	dst, st, err := restoreInto(t, p, clk, b, 120*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(RestoreStats{Restored: 4, Expired: 1}, st); diff != "" {
		t.Errorf("RestoreStats (-want +got):\n%s", diff)
	}
	for c, want := range map[int]time.Duration{1: 80 * time.Second, 2: 180 * time.Second, 3: -1} {
		if got := remainingOf(dst, client(c)); got != want {
			t.Errorf("client %d has %v left, want %v (-1: none)", c, got, want)
		}
	}
}

func TestSnapshotDropsUnknownServicesAndServers(t *testing.T) {
	src, clk, p, b := snapFixture(t)
	defer src.Close()
	tb := New(Options{Now: clk.Now, SweepInterval: -1})
	defer tb.Close()
	ref := tb.SetService(svcWeb, ServiceConfig{Timeout: 300 * time.Second})
	tb.SetServer(ref, p.servers[0], ServerUp) // only server 1 remains; no mark service
	st, err := tb.ReadSnapshot(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if st.Restored+st.Unknown != 5 || st.Unknown == 0 {
		t.Errorf("RestoreStats = %+v, want the other templates counted unknown", st)
	}
	for _, tp := range tb.List(Filter{}) {
		if tp.Server != p.servers[0] {
			t.Errorf("restored a template on unknown server %s", tp.Server)
		}
	}
}

func TestSnapshotBadFiles(t *testing.T) {
	src, clk, p, good := snapFixture(t)
	defer src.Close()
	flip := func(i int) []byte { b := bytes.Clone(good); b[i] ^= 0x40; return b }
	version := bytes.Clone(good)
	binary.LittleEndian.PutUint16(version[8:], 9)
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "not a tether affinity snapshot"},
		{"foreign", []byte("{\"templates\": []}"), "not a tether affinity snapshot"},
		{"header only", good[:12], "truncated"},
		{"truncated", good[:len(good)-30], "truncated"},
		{"padded", append(bytes.Clone(good), 0), "padded"},
		{"corrupt record", flip(snapHeader + 30), "checksum mismatch"},
		{"corrupt checksum", flip(len(good) - 1), "checksum mismatch"},
		{"future version", version, "version 9 is not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, st, err := restoreInto(t, p, clk, tc.b, 0)
			if err == nil || !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrSnapshot saying %q", err, tc.want)
			}
			if tb.Len() != 0 || st != (RestoreStats{}) {
				t.Errorf("a bad snapshot restored something: Len %d, %+v", tb.Len(), st)
			}
		})
	}
}

func TestSaveAndLoadSnapshotFile(t *testing.T) {
	src, clk, p, _ := snapFixture(t)
	defer src.Close()
	path := filepath.Join(t.TempDir(), "affinity.snap")
	if st, err := src.LoadSnapshot(path); err != nil || st != (RestoreStats{}) {
		t.Fatalf("missing snapshot: %+v, %v; want nothing and no error", st, err)
	}
	if err := src.SaveSnapshot(path); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("directory holds %d files, want only the snapshot (no temp file left)", len(ents))
	}
	dst, _, _ := restoreInto(t, p, clk, nil, 0)
	dst.Invalidate(Filter{})
	st, err := dst.LoadSnapshot(path)
	if err != nil || st.Restored != 5 {
		t.Fatalf("LoadSnapshot = %+v, %v", st, err)
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.LoadSnapshot(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("error %v does not name the file", err)
	}
	if err := src.SaveSnapshot(filepath.Join(t.TempDir(), "no", "such", "dir")); err == nil {
		t.Errorf("saving into a missing directory succeeded")
	}
}

func FuzzReadSnapshot(f *testing.F) {
	var p *rrPicker
	{
		t := &testing.T{}
		src, _, pp, b := snapFixture(t)
		src.Close()
		p = pp
		f.Add(b)
		f.Add(b[:40])
	}
	f.Add([]byte(snapMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		clk := newFakeClock()
		tb, st, err := restoreInto(t, p, clk, b, 0)
		if err != nil {
			if !errors.Is(err, ErrSnapshot) {
				t.Fatalf("error %v does not wrap ErrSnapshot", err)
			}
			if tb.Len() != 0 {
				t.Fatalf("failed restore left %d templates", tb.Len())
			}
			return
		}
		if st.Restored != tb.Len() {
			t.Fatalf("Restored %d, Len %d", st.Restored, tb.Len())
		}
	})
}

// LoadSnapshot checks the file before reading it: a FIFO used to block it
// forever, and a file far larger than any snapshot of the table was read
// whole (twice) before being refused.
func TestLoadSnapshotIsBounded(t *testing.T) {
	tb := New(Options{Capacity: 100, Shards: 1, SweepInterval: -1})
	defer tb.Close()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "snap.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.snap")
	if err := os.WriteFile(big, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{fifo, "is a FIFO, not a regular file"},
		{big, "at most 100 templates, affinity.capacity"},
	} {
		done := make(chan error, 1)
		go func() { _, err := tb.LoadSnapshot(tc.path); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LoadSnapshot(%s): %v, want an error containing %q", tc.path, err, tc.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("LoadSnapshot(%s) has not returned after 10s", tc.path)
		}
	}
}
