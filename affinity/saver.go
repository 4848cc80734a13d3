package affinity

import (
	"log/slog"
	"net/netip"
	"time"
)

// SnapshotEvery writes the table's snapshot every interval while it runs,
// and at once when now receives, so that a crash or an OOM kill costs at
// most an interval of templates. where gives the path and interval in
// force (a reload may change them; an empty path writes nothing). It runs
// off the data path: the table is walked a chunk of slots at a time, so no
// lookup waits long. It returns when stop is closed, after closing done.
func (t *Table) SnapshotEvery(stop, now <-chan struct{}, done chan<- struct{}, where func() (string, time.Duration), log *slog.Logger) {
	defer close(done)
	for {
		_, iv := where()
		if iv <= 0 {
			iv = time.Second // no snapshot configured now: look again later
		}
		tm := time.NewTimer(iv)
		select {
		case <-stop:
			tm.Stop()
			return
		case <-now:
			tm.Stop()
		case <-tm.C:
		}
		if path, _ := where(); path != "" {
			start := time.Now()
			if err := t.SaveSnapshot(path); err != nil {
				log.Warn("persistence snapshot not written", "path", path, "err", err)
				continue
			}
			log.Debug("persistence snapshot written", "path", path, "templates", t.Len(), "took", time.Since(start))
		}
	}
}

// Fixed is a Picker that always chooses server: it binds a template to a
// server already decided elsewhere (the kernel's template map).
type Fixed netip.AddrPort

// Pick returns the server.
func (f Fixed) Pick(netip.Addr) (netip.AddrPort, error) { return netip.AddrPort(f), nil }
