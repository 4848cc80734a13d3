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
