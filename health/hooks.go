package health

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Hooks runs the commands a config names for events (keepalived's
// quorum_up and quorum_down), in the background: in order per key (a
// service), at most hookBacklog waiting per key (more are dropped with a
// log line), each stopped after HookTimeout. Close waits for them.
type Hooks struct {
	log    *slog.Logger
	do     Do
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	queues map[string]chan hook // one runner goroutine per key
	closed bool
}

type hook struct {
	argv, env []string
}

// HookTimeout bounds one hook's run; hookBacklog the hooks waiting per key.
const (
	HookTimeout = 10 * time.Second
	hookBacklog = 4
)

// NewHooks returns a runner; do starts commands where the proxy's sockets
// are made (nil: as is).
func NewHooks(log *slog.Logger, do Do) *Hooks {
	if do == nil {
		do = func(f func() error) error { return f() }
	}
	h := &Hooks{log: log, do: do, queues: map[string]chan hook{}}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	return h
}

// Run queues argv (with env added to tether's environment) behind key's
// earlier hooks. An empty argv does nothing.
func (h *Hooks) Run(key string, argv []string, env ...string) {
	if len(argv) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	q := h.queues[key]
	if q == nil {
		q = make(chan hook, hookBacklog)
		h.queues[key] = q
		h.wg.Add(1)
		go h.runner(key, q)
	}
	select {
	case q <- hook{argv, env}:
	default:
		h.log.Warn("hook dropped: too many waiting", "key", key, "command", argv[0])
	}
}

func (h *Hooks) runner(key string, q chan hook) {
	defer h.wg.Done()
	for {
		select {
		case <-h.ctx.Done():
			return
		case k := <-q:
			h.run(key, k)
		}
	}
}

func (h *Hooks) run(key string, k hook) {
	ctx, cancel := context.WithTimeout(h.ctx, HookTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.argv[0], k.argv[1:]...)
	cmd.Env = append(os.Environ(), k.env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	err := h.do(cmd.Start)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		h.log.Warn("hook failed", "key", key, "command", strings.Join(k.argv, " "), "err", err, "output", truncate(out.Bytes()))
		return
	}
	h.log.Info("hook ran", "key", key, "command", strings.Join(k.argv, " "))
}

// Close stops waiting hooks, kills running ones, and waits for them.
func (h *Hooks) Close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.cancel()
	h.wg.Wait()
}
