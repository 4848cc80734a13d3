package affinity

import (
	"context"
	"time"
)

// The coarse clock. The table's goroutine stores the time in ticks every
// tick, so that a lookup reads one word instead of the clock. A ticker
// that never stops woke an idle tether about 100 times a second (and
// with the Go runtime's poller and sysmon, some 470 context switches a
// second). So the clock runs clockIdleTicks ticks at a time and then
// sleeps: it stores clockAsleep and stops its ticker. The first reader
// that finds it asleep reads the real clock, stores that, and wakes the
// goroutine, which ticks again. Under load that is one reader a second
// paying a clock read and a channel send; idle, nobody wakes it.

// clockAsleep is the clock's value while it does not tick. A real time
// of that value (497 days after the table was made, for one tick) is
// stored one tick earlier.
const clockAsleep = ^uint32(0)

// clockIdleTicks is how many ticks the clock runs after it is woken.
const clockIdleTicks = 100

// nowTicks is the time in ticks since the table was made: the coarse
// clock, or the injected clock read at once (with one injected, the
// coarse clock stays asleep). Small enough to inline: a hit's every
// instruction counts.
func (t *Table) nowTicks() uint32 {
	if v := t.clock.Load(); v != clockAsleep {
		return v
	}
	return t.slowTicks()
}

// slowTicks is nowTicks when the coarse clock is asleep.
func (t *Table) slowTicks() uint32 {
	if t.injected {
		return t.injectedTicks()
	}
	return t.wakeClock()
}

// exactTicks is the time in ticks read from the clock itself, the
// injected one or the real one, without waking the coarse clock.
func (t *Table) exactTicks() uint32 {
	if t.injected {
		return t.injectedTicks()
	}
	return t.realTicks()
}

// realTicks is the real time in ticks since the table was made.
func (t *Table) realTicks() uint32 {
	v := uint32(time.Since(t.epoch) / tick)
	if v == clockAsleep {
		v--
	}
	return v
}

// wakeClock is the time for a reader that found the clock asleep: it
// stores it and wakes the goroutine. Once the goroutine has stopped
// (Close), each reader reads the real clock: nothing would keep a stored
// time current.
func (t *Table) wakeClock() uint32 {
	v := t.realTicks()
	if t.closed.Load() {
		return v
	}
	t.clock.CompareAndSwap(clockAsleep, v)
	select {
	case t.wake <- struct{}{}:
	default: // a wake is pending already
	}
	return v
}

// run keeps the coarse clock (unless a clock was injected) and sweeps
// every iv (unless iv is not positive).
func (t *Table) run(ctx context.Context, iv time.Duration) {
	defer close(t.done)
	defer func() {
		t.closed.Store(true)
		t.clock.Store(clockAsleep) // readers read the real clock from now on
	}()
	var ticks <-chan time.Time
	var tk *time.Ticker
	left := 0 // ticks until the clock sleeps
	if !t.injected {
		tk = time.NewTicker(tick)
		defer tk.Stop()
		ticks, left = tk.C, t.idleTicks
	}
	var sweeps <-chan time.Time
	if iv > 0 {
		sw := time.NewTicker(iv)
		defer sw.Stop()
		sweeps = sw.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
			if left == 0 { // asleep: tick again
				tk.Reset(tick)
			}
			left = t.idleTicks
		case <-ticks:
			if left--; left > 0 {
				t.clock.Store(t.realTicks())
				continue
			}
			tk.Stop()
			t.clock.Store(clockAsleep)
		case <-sweeps:
			t.sweep(t.exactTicks())
		}
	}
}
