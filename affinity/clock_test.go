package affinity

import (
	"testing"
	"time"
)

// clockTable is a table on the real clock whose clock sleeps after a few
// ticks, and one service with timeout.
func clockTable(t *testing.T, timeout time.Duration) (*Table, ServiceRef, *rrPicker) {
	t.Helper()
	p := newPicker(2)
	tb := New(Options{SweepInterval: -1, idleTicks: 3})
	t.Cleanup(func() { tb.Close() })
	ref := tb.SetService(svcWeb, ServiceConfig{Timeout: timeout})
	for _, s := range p.servers {
		tb.SetServer(ref, s, ServerUp)
	}
	return tb, ref, p
}

// asleep waits until tb's clock sleeps.
func asleep(t *testing.T, tb *Table) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); tb.clock.Load() != clockAsleep; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the clock never slept in 5 s without a reader")
		}
	}
}

// An idle table's clock stops ticking (an idle tether woke some 470
// times a second for it), a reader finds the real time and wakes it, and
// it ticks again until it sleeps again.
func TestClockSleepsWhenIdle(t *testing.T) {
	tb, _, _ := clockTable(t, time.Minute)
	asleep(t, tb)
	time.Sleep(5 * tick)
	if v := tb.clock.Load(); v != clockAsleep {
		t.Fatalf("the sleeping clock ticked: %d", v)
	}
	want := uint32(time.Since(tb.epoch) / tick)
	if got := tb.nowTicks(); got+1 < want || got > want+1 {
		t.Fatalf("a reader of the sleeping clock got %d ticks, want the real %d", got, want)
	}
	woke := tb.clock.Load()
	if woke == clockAsleep {
		t.Fatal("the reader left the clock asleep")
	}
	for deadline := time.Now().Add(5 * time.Second); tb.clock.Load() == woke; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the woken clock did not tick in 5 s")
		}
	}
	asleep(t, tb) // and sleeps again
}

// A template expires on time although nothing woke the clock meanwhile:
// the lookup after the timeout reads the real time.
func TestExpiryAcrossASleepingClock(t *testing.T) {
	tb, ref, p := clockTable(t, 5*tick)
	l, err := tb.GetOrBind(ref, client(1), p)
	if err != nil || l.Hit {
		t.Fatalf("first connection: %+v, %v", l, err)
	}
	tb.Release(l)
	asleep(t, tb)
	time.Sleep(10 * tick) // twice the timeout, the clock asleep all along
	l, err = tb.GetOrBind(ref, client(1), p)
	if err != nil {
		t.Fatal(err)
	}
	if l.Hit {
		t.Fatalf("the template outlived its %v timeout by %v: the lookup read a stale clock", 5*tick, 5*tick)
	}
}

// After Close the clock still follows real time: the table stays usable,
// and expiry with it.
func TestClockAfterClose(t *testing.T) {
	tb, _, _ := clockTable(t, time.Minute)
	tb.Close()
	a := tb.nowTicks()
	time.Sleep(5 * tick)
	if b := tb.nowTicks(); b < a+4 {
		t.Fatalf("after Close the clock went from %d to %d ticks in %v", a, b, 5*tick)
	}
}
