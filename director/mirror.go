package director

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/tetherlb/tether/affinity"
)

// Mirror keeps the kernel template maps equal to the persistence table:
// one goroutine drains the table's journal (affinity.Table.Follow) and
// writes each batch of changes in one nftables transaction; when the
// journal overflowed or a write failed, it rebuilds the maps from the
// table instead. The kernel may lag the table by one batch; it is never
// ahead of it, and a client it does not know yet goes up the queue.
type Mirror struct {
	o      MirrorOptions
	f      *affinity.Follower
	cancel context.CancelFunc
	done   chan struct{}
	syncc  chan chan struct{}

	mu    sync.Mutex // guards stats
	stats MirrorStats
}

// MirrorOptions configure a Mirror.
type MirrorOptions struct {
	Table *affinity.Table
	// Limit bounds the journal: changes the table keeps between drains.
	Limit int
	// Apply writes changes to the kernel in one transaction; Rebuild
	// writes the maps anew from the table. Both run on the mirror's
	// goroutine, never under a lock of the table's.
	Apply   func([]affinity.Change) error
	Rebuild func() error
	Logger  *slog.Logger
	// Pace is the least time between two writes the journal wakes (a
	// Sync writes at once): under a steady load every connection's close
	// rewrites its template's element, and a transaction a wake kept the
	// ruleset changing so often that `nft list` (which starts its dump
	// over when the ruleset changes under it) took a minute. 0: none.
	Pace time.Duration
}

// MirrorStats count the mirror's work.
type MirrorStats struct {
	Changes  uint64 // template changes written
	Batches  uint64 // transactions
	Rebuilds uint64 // full rebuilds (journal overflow, failed write)
}

// StartMirror starts following o.Table. Close stops it.
func StartMirror(o MirrorOptions) (*Mirror, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f, err := o.Table.Follow(o.Limit, false)
	if err != nil {
		cancel()
		return nil, err
	}
	m := &Mirror{o: o, f: f, cancel: cancel, done: make(chan struct{}), syncc: make(chan chan struct{})}
	go m.run(ctx)
	return m, nil
}

// Close stops the mirror and the table's journal.
func (m *Mirror) Close() {
	m.cancel()
	<-m.done
	m.f.Close()
}

// Sync returns once every change the table made before the call is in
// the kernel (or the mirror has stopped).
func (m *Mirror) Sync() {
	reply := make(chan struct{})
	select {
	case m.syncc <- reply:
		<-reply
	case <-m.done:
	}
}

// Stats are the mirror's counters.
func (m *Mirror) Stats() MirrorStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

func (m *Mirror) run(ctx context.Context) {
	defer close(m.done)
	var buf []affinity.Change
	var last time.Time // the last write
	rebuild := false   // Commit fills the maps; the journal is on from the start
	for {
		var reply chan struct{}
		if !rebuild {
			select {
			case <-ctx.Done():
				return
			case <-m.f.Wake():
				if wait := m.o.Pace - time.Since(last); wait > 0 {
					t := time.NewTimer(wait) // more changes join this batch meanwhile
					select {
					case <-ctx.Done():
						t.Stop()
						return
					case <-t.C:
					case reply = <-m.syncc:
						t.Stop()
					}
				}
			case reply = <-m.syncc:
			}
		}
		last = time.Now()
		changes, lost := m.f.Changes(buf[:0])
		buf = changes
		switch {
		case rebuild || lost:
			if err := m.o.Rebuild(); err != nil {
				m.o.Logger.Warn("director: kernel template maps not rebuilt; returning clients go up the queue until the next try", "err", err)
				rebuild = true
				if !m.pause(ctx, reply) {
					return
				}
				continue
			}
			m.count(0, true)
			rebuild = false
		case len(changes) > 0:
			if err := m.o.Apply(changes); err != nil {
				m.o.Logger.Warn("director: kernel template map write failed; rebuilding", "err", err)
				rebuild = true
				if !m.pause(ctx, reply) {
					return
				}
				continue
			}
			m.count(len(changes), false)
		}
		if reply != nil {
			close(reply)
		}
	}
}

// pause waits a moment before retrying a failed write. It answers Sync
// calls meanwhile: a kernel that refuses writes must not stall a reload.
func (m *Mirror) pause(ctx context.Context, reply chan struct{}) bool {
	if reply != nil {
		close(reply)
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case r := <-m.syncc:
			close(r)
		}
	}
}

func (m *Mirror) count(changes int, rebuild bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stats.Changes += uint64(changes)
	m.stats.Batches++
	if rebuild {
		m.stats.Rebuilds++
	}
}
