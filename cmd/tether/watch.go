package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/internal/bounded"
)

// watchSettle is how long the watcher waits after a change before it looks:
// an editor or a ConfigMap update makes several events for one change.
const watchSettle = 200 * time.Millisecond

// watchConfig asks for a reload on reload (the SIGHUP path, with its rules:
// a bad file is logged and the running configuration stays) whenever the
// content of the config file at path changes. It watches the file's
// directory, not the file: a Kubernetes ConfigMap update swaps a symlink
// (..data) in it, and an editor renames a new file over the old one. It
// also watches the directory the file's symlinks lead to, following it. It
// returns when ctx ends.
func watchConfig(ctx context.Context, log *slog.Logger, path string, reload chan<- os.Signal) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	if err := w.Add(filepath.Dir(path)); err != nil {
		return err
	}
	// The directory of the file the path leads to, through symlinks, too:
	// a write there changes the config without touching path's directory.
	target := ""
	follow := func() {
		t, err := filepath.EvalSymlinks(path)
		if err != nil || filepath.Dir(t) == target || filepath.Dir(t) == filepath.Dir(path) {
			return
		}
		if target != "" {
			w.Remove(target) // gone with its version, mostly
		}
		target = filepath.Dir(t)
		w.Add(target)
	}
	follow()
	last, _ := bounded.ReadFile(path, config.MaxFileSize)
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.Errors:
			log.Warn("config watch", "err", err)
		case <-w.Events:
			settle.Reset(watchSettle)
		case <-settle.C:
			follow()
			now, err := bounded.ReadFile(path, config.MaxFileSize)
			if err != nil || bytes.Equal(now, last) {
				continue // gone for a moment mid-swap, or the same content
			}
			last = now
			log.Info("config file changed; reloading", "config", path)
			select {
			case reload <- syscall.SIGHUP:
			default: // a reload is pending already
			}
		}
	}
}
