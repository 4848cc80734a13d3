package health

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"time"

	"github.com/tetherlb/tether/config"
)

// Target is one server to check, with its check.
type Target struct {
	Check config.HealthCheck
	Probe Probe
}

// Change is a server's state moving, reported once.
type Change[K comparable] struct {
	Key K
	Up  bool
	// Err is the last failure when going down; nil when coming up.
	Err error
	// Gen tells a change of the current target from a late one of a
	// target that Set has since replaced: see Monitor.Current.
	Gen uint64
}

// Status is what a Monitor knows of one target.
type Status struct {
	Up     bool
	Since  time.Time // of the last change, or of the start
	Checks uint64    // run so far
	Fails  uint64    // of them failed
	// LastErr is the last failure; nil after a success.
	LastErr error
}

// Monitor checks a set of targets, each on its own goroutine, and reports
// changes to onChange. The set is replaced whole by Set; Close stops
// every goroutine.
type Monitor[K comparable] struct {
	onChange func(Change[K])
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	mu      sync.Mutex
	targets map[K]*running
	gen     uint64
	closed  bool
}

type running struct {
	check  config.HealthCheck
	gen    uint64
	cancel context.CancelFunc
	status Status
}

// NewMonitor returns a Monitor that reports to onChange. onChange runs on
// the target's goroutine; it may block (the target's next check waits).
func NewMonitor[K comparable](onChange func(Change[K])) *Monitor[K] {
	m := &Monitor[K]{onChange: onChange, targets: map[K]*running{}}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m
}

// Set makes ts the targets. A target whose key and check are unchanged
// keeps running with its state; a new or changed one starts in its
// check's start state, and its key is returned in started so that the
// caller applies that state; the ones not in ts stop (without waiting:
// a late change of theirs has a stale Gen).
func (m *Monitor[K]) Set(ts map[K]Target) (started []K) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	for k, r := range m.targets {
		if t, ok := ts[k]; !ok || !reflect.DeepEqual(t.Check, r.check) {
			r.cancel()
			delete(m.targets, k)
		}
	}
	n := 0
	for k := range ts {
		if _, ok := m.targets[k]; !ok {
			n++
		}
	}
	i := 0
	for k, t := range ts {
		if _, ok := m.targets[k]; ok {
			continue
		}
		m.gen++
		ctx, cancel := context.WithCancel(m.ctx)
		r := &running{check: t.Check, gen: m.gen, cancel: cancel, status: Status{Up: t.Check.Start != config.StartDown, Since: time.Now()}}
		m.targets[k] = r
		started = append(started, k)
		// The new targets' first checks are spread over their interval,
		// as HAProxy spreads its checks at start, so that a hundred
		// servers are not all probed at the same instant.
		delay := t.Check.Interval.D() * time.Duration(i) / time.Duration(n)
		i++
		m.wg.Add(1)
		go m.run(ctx, k, r, t.Probe, delay)
	}
	return started
}

// Current reports whether gen is the generation of k's running target:
// a change that is not current is late and must be ignored.
func (m *Monitor[K]) Current(k K, gen uint64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.targets[k]
	return r != nil && r.gen == gen
}

// Status is k's status; ok is false when k is not checked.
func (m *Monitor[K]) Status(k K) (s Status, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.targets[k]
	if r == nil {
		return Status{}, false
	}
	return r.status, true
}

// Close stops every check and waits for their goroutines; Set does
// nothing afterwards.
func (m *Monitor[K]) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

// run checks one target every interval, the first time after delay, and
// applies rise and fall.
func (m *Monitor[K]) run(ctx context.Context, k K, r *running, probe Probe, delay time.Duration) {
	defer m.wg.Done()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	hc := r.check
	up := hc.Start != config.StartDown
	streak := 0 // failures while up, successes while down
	tick := time.NewTicker(hc.Interval.D())
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, hc.Timeout.D())
		err := probe(cctx)
		cancel()
		if ctx.Err() != nil {
			return // stopped: the result means nothing
		}
		if errors.Is(err, context.DeadlineExceeded) {
			err = errors.New("no answer within the timeout " + hc.Timeout.D().String())
		}
		changed := false
		switch {
		case up && err != nil:
			if streak++; streak >= hc.Fall {
				up, streak, changed = false, 0, true
			}
		case up:
			streak = 0
		case err == nil:
			if streak++; streak >= hc.Rise {
				up, streak, changed = true, 0, true
			}
		default:
			streak = 0
		}
		m.mu.Lock()
		r.status.Checks++
		r.status.LastErr = err
		if err != nil {
			r.status.Fails++
		}
		if changed {
			r.status.Up, r.status.Since = up, time.Now()
		}
		m.mu.Unlock()
		if changed {
			m.onChange(Change[K]{Key: k, Up: up, Err: err, Gen: r.gen})
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
