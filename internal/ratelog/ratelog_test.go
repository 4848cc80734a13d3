package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLogIsRateLimitedAndCountsWhatItHeldBack(t *testing.T) {
	var out bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&out, nil)), time.Second)
	clock := time.Unix(1000, 0)
	l.now = func() time.Time { return clock }
	for range 1000 {
		l.Log(slog.LevelError, "accept failed", "err", "too many open files")
	}
	l.Log(slog.LevelWarn, "another kind")
	clock = clock.Add(time.Second)
	l.Log(slog.LevelError, "accept failed", "err", "too many open files")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines for 1001 failures and one other line over a second, want 3:\n%s", len(lines), out.String())
	}
	if strings.Contains(lines[0], "suppressed") || !strings.Contains(lines[2], "suppressed=999") {
		t.Errorf("the first line should carry no count and the next one 999:\n%s", out.String())
	}
}

// A Kind writes as Log does, one line an interval counting what it held
// back, and holding a line back allocates nothing.
func TestKindHoldsBackWithoutAllocating(t *testing.T) {
	var out bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&out, nil)), time.Second)
	clock := time.Unix(1000, 0)
	l.now = func() time.Time { return clock }
	k := l.Kind(slog.LevelWarn, "at the cap")
	write := func() {
		if k.Due() {
			k.Write("service", "web")
		}
	}
	write()
	if n := testing.AllocsPerRun(999, write); n != 0 {
		t.Errorf("a held-back line allocates %v times, want 0", n)
	}
	clock = clock.Add(time.Second)
	write()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines over a second and a line, want 2:\n%s", len(lines), out.String())
	}
	// AllocsPerRun calls once more than it counts, as a warm-up.
	if !strings.Contains(lines[0], "service=web") || strings.Contains(lines[0], "suppressed") || !strings.Contains(lines[1], "suppressed=1000") {
		t.Errorf("want the first line without a count and the next with 1000:\n%s", out.String())
	}
}
