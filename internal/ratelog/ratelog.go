package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Logger writes each kind of line at most once an interval. The zero
// value is not usable; make one with New.
type Logger struct {
	log   *slog.Logger
	every time.Duration
	now   func() time.Time

	mu    sync.Mutex
	kinds map[string]*kind // keyed by the message: a fixed set, from code
}

type kind struct {
	last       time.Time
	suppressed int
}

// New makes a Logger that writes to log at most one line of a kind every
// interval.
func New(log *slog.Logger, every time.Duration) *Logger {
	return &Logger{log: log, every: every, now: time.Now, kinds: map[string]*kind{}}
}

// Log writes msg with args at level, unless a line with the same msg was
// written less than the interval ago; then it only counts it. A written
// line carries "suppressed": the lines held back since the last one.
func (l *Logger) Log(level slog.Level, msg string, args ...any) {
	now := l.now()
	l.mu.Lock()
	k := l.kinds[msg]
	if k == nil {
		k = &kind{}
		l.kinds[msg] = k
	}
	if !k.last.IsZero() && now.Sub(k.last) < l.every {
		k.suppressed++
		l.mu.Unlock()
		return
	}
	n := k.suppressed
	k.last, k.suppressed = now, 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.log.Log(context.Background(), level, msg, args...)
}
