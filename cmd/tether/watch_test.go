package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// --watch reloads on a change of the file's content: a Kubernetes
// ConfigMap update (a new directory, the ..data symlink swapped to it by a
// rename) and a plain write alike; the reload is then SIGHUP's.
func TestWatchConfig(t *testing.T) {
	dir := t.TempDir()
	version := func(name, content string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "tether.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_12_02_v1", "services: [] # v1\n")
	os.Symlink("..2026_12_02_v1", filepath.Join(dir, "..data"))
	path := filepath.Join(dir, "tether.yaml")
	os.Symlink("..data/tether.yaml", path)

	reload := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- watchConfig(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), path, reload) }()
	defer func() { cancel(); <-done }()
	expect := func(what string) {
		t.Helper()
		select {
		case <-reload:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no reload asked within 10s", what)
		}
	}
	time.Sleep(100 * time.Millisecond) // the watch is set before the first change (not a timing claim: it only has to be in place)

	// The ConfigMap way: a new version, then ..data swapped atomically.
	version("..2026_12_02_v2", "services: [] # v2\n")
	os.Symlink("..2026_12_02_v2", filepath.Join(dir, "..data_tmp"))
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(dir, "..2026_12_02_v1"))
	expect("a ConfigMap update")

	// An in-place write of the file the symlinks lead to.
	if err := os.WriteFile(filepath.Join(dir, "..2026_12_02_v2", "tether.yaml"), []byte("services: [] # v3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	expect("a write")
}
