package director

import (
	"testing"
	"time"

	"github.com/tetherlb/tether/testenv"
	"golang.org/x/sys/unix"
)

// openScanning opens a director without queues in a namespace of its own
// that scans every 50 ms and calls during each scan the hook, which runs
// in the scan, on its thread.
func openScanning(t *testing.T, label string, hook func()) *Director[int] {
	t.Helper()
	env := testenv.Start(t, testenv.Spec{Backends: 1, Label: label})
	d, err := Open(Options[int]{
		Do:        env.LB.Do,
		ScanEvery: 50 * time.Millisecond,
		Decide:    func(FlowKey, uint32) (Verdict, uint32, int) { return nfAccept, 0, 0 },
		Release:   func(int) {},
		Marks:     func() (uint32, uint32) { hook(); return 0x7e000000, 0xff000000 },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// scanned waits for n scans and returns the interval after them.
func scanned(t *testing.T, d *Director[int], n uint64) time.Duration {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); d.Stats().Scans < n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d scans in 10 s, want %d", d.Stats().Scans, n)
		}
	}
	return d.ScanInterval()
}

// A scan that waits (for a CPU on a busy host, here in a sleep) does not
// stretch the interval: the interval follows the CPU time scans use.
// Counted in wall time, a 200 ms wait made the next scan 10 s away and
// the kernel map's lag 20 s.
func TestScanIntervalIgnoresWaits(t *testing.T) {
	d := openScanning(t, "scanwait", func() { time.Sleep(200 * time.Millisecond) })
	if got := scanned(t, d, 1); got > time.Second {
		st := d.Stats()
		t.Errorf("interval %v after scans of %v (%v CPU), want it near the 50 ms asked: waits are not cost", got, st.ScanTime, st.ScanCPU)
	}
}

// A scan that uses the CPU still pushes the next one away, 50 times what
// it used, so that scans keep to 2 % of a CPU.
func TestScanIntervalFollowsCPU(t *testing.T) {
	spin := func() {
		var ts unix.Timespec
		unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
		for end := ts.Nano() + int64(40*time.Millisecond); ts.Nano() < end; {
			unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
		}
	}
	d := openScanning(t, "scancpu", spin)
	if got := scanned(t, d, 1); got < 2*time.Second {
		st := d.Stats()
		t.Errorf("interval %v after a scan that used %v of CPU, want at least 50 times 40 ms", got, st.ScanCPU)
	}
}
