package proxy

import (
	"log/slog"
	"time"
)

// snapshots writes the persistence snapshot every snapshot_interval while
// the proxy runs, and at once when a reload asks (now), so that a crash or
// an OOM kill costs at most an interval of templates; Shutdown writes the
// last one itself. It runs off the data path: the table is walked a chunk
// of slots at a time, so no lookup waits long. It returns when stop is
// closed.
func (p *Proxy) snapshots(stop <-chan struct{}, now <-chan struct{}) {
	defer close(p.snapDone)
	for {
		cfg := p.currentCfg()
		iv := cfg.SnapshotInterval.D()
		if iv <= 0 {
			iv = time.Second // no snapshot configured now: look again later
		}
		t := time.NewTimer(iv)
		select {
		case <-stop:
			t.Stop()
			return
		case <-now:
			t.Stop()
		case <-t.C:
		}
		if path := p.currentCfg().Snapshot; path != "" {
			start := time.Now()
			if err := p.table.SaveSnapshot(path); err != nil {
				p.rlog.Log(slog.LevelWarn, "persistence snapshot not written", "path", path, "err", err)
				continue
			}
			p.log.Debug("persistence snapshot written", "path", path, "templates", p.table.Len(), "took", time.Since(start))
		}
	}
}
