package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Logger writes each kind of line at most once an interval. The zero
// value is not usable; make one with New.
type Logger struct {
	log   *slog.Logger
	every time.Duration
	now   func() time.Time

	mu    sync.Mutex
	kinds map[string]*Kind // Log's, keyed by the message: a fixed set, from code
}

// New makes a Logger that writes to log at most one line of a kind every
// interval.
func New(log *slog.Logger, every time.Duration) *Logger {
	return &Logger{log: log, every: every, now: time.Now, kinds: map[string]*Kind{}}
}

// Log writes msg with args at level, unless a line with the same msg was
// written less than the interval ago; then it only counts it. A written
// line carries "suppressed": the lines held back since the last one. Its
// arguments are built at every call: a caller asked to write at every
// event of a flood keeps a Kind instead.
func (l *Logger) Log(level slog.Level, msg string, args ...any) {
	l.mu.Lock()
	k := l.kinds[msg]
	if k == nil {
		k = l.Kind(level, msg)
		l.kinds[msg] = k
	}
	l.mu.Unlock()
	if k.Due() {
		k.write(level, args)
	}
}

// Kind is one kind of line for a caller that may be asked to write it at
// every event of a flood (a refusal a connection): Due takes no lock and
// allocates nothing while the line is held back, so the caller builds the
// line's arguments only for the lines written. Log keeps one a message.
type Kind struct {
	l     *Logger
	level slog.Level
	msg   string
	next  atomic.Int64 // unix ns: lines before it are held back
	held  atomic.Int64 // lines held back since the last one written
}

// Kind makes a Kind of l's lines: msg at level, at most one an interval.
func (l *Logger) Kind(level slog.Level, msg string) *Kind {
	return &Kind{l: l, level: level, msg: msg}
}

// Due reports whether a line is to be written now, and takes its turn if
// so (the caller then writes it with Write); otherwise it counts the line
// as held back.
func (k *Kind) Due() bool {
	now := k.l.now().UnixNano()
	if n := k.next.Load(); now >= n && k.next.CompareAndSwap(n, now+int64(k.l.every)) {
		return true
	}
	k.held.Add(1)
	return false
}

// Write writes the line Due let through, with args, and "suppressed": the
// lines held back since the last one written, if any.
func (k *Kind) Write(args ...any) { k.write(k.level, args) }

func (k *Kind) write(level slog.Level, args []any) {
	if n := k.held.Swap(0); n > 0 {
		args = append(args, "suppressed", n)
	}
	k.l.log.Log(context.Background(), level, k.msg, args...)
}
