package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherlb/tether/affinity"
)

// Under a steady load of new connections, reloads that change the timeout,
// add a server and rename the service: no connection fails, the templates
// stay, and the new timeout applies to them.
func TestReloadUnderLoad(t *testing.T) {
	b := []*backend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	listen := freeAddr(t)
	cfgFor := func(name, timeout string, servers ...*backend) string {
		return "services:\n" + serviceYAML(name, listen, "rr", "    persistence: {timeout: "+timeout+", netmask: 255.255.255.0}\n", servers...)
	}
	p := startProxy(t, mustConfig(t, cfgFor("web", "600s", b[0], b[1])), Options{})
	first := map[netip.Addr]string{}
	for i := range 40 {
		name, err := who(srcAddr(i), listen)
		if err != nil {
			t.Fatal(err)
		}
		first[srcAddr(i)] = name
	}

	// Load: 4 clients loop over the 40 source addresses until stopped
	// (bounded by a deadline too).
	var ok, failed, moved atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	deadline := time.Now().Add(30 * time.Second)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; time.Now().Before(deadline); i++ {
				select {
				case <-stop:
					return
				default:
				}
				src := srcAddr(i % 40)
				name, err := who(src, listen)
				if err != nil {
					failed.Add(1)
					t.Logf("connection from %s failed: %v", src, err)
					continue
				}
				ok.Add(1)
				if name != first[src] {
					moved.Add(1)
				}
			}
		}()
	}
	waitFor := func(n int64) {
		for want := ok.Load() + n; ok.Load() < want && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor(50)
	for _, cfg := range []string{
		cfgFor("web", "120s", b[0], b[1]),       // shorter timeout
		cfgFor("web", "120s", b[0], b[1], b[2]), // a new server
		cfgFor("www", "60s", b[0], b[1], b[2]),  // renamed, timeout again
	} {
		if err := p.Reload(mustConfig(t, cfg)); err != nil {
			t.Fatal(err)
		}
		waitFor(50)
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || ok.Load() < 200 {
		t.Fatalf("%d connections failed, %d succeeded across reloads", failed.Load(), ok.Load())
	}
	if moved.Load() != 0 {
		t.Errorf("%d connections reached another server than their template's", moved.Load())
	}
	tpl := p.Table().List(affinity.Filter{})
	if len(tpl) != 10 {
		t.Errorf("%d templates after the reloads, want the 10 /24 groups", len(tpl))
	}
	for _, tp := range tpl {
		if tp.Remaining > 60*time.Second {
			t.Errorf("template %s has %v left, more than the new 60s timeout", tp.Client, tp.Remaining)
		}
	}
}

// A bad reload changes nothing: the old services keep running.
func TestReloadFailureKeepsOldConfig(t *testing.T) {
	b := startBackend(t, "a")
	listen := freeAddr(t)
	p := startProxy(t, mustConfig(t, "services:\n"+serviceYAML("web", listen, "rr", "", b)), Options{})
	// The second service's address is taken by another socket: the reload
	// must fail as a whole.
	taken := startBackend(t, "squatter")
	bad := mustConfig(t, "services:\n"+serviceYAML("web", listen, "rr", "", b)+serviceYAML("more", taken.addr.String(), "rr", "", b))
	if err := p.Reload(bad); err == nil {
		t.Fatal("reload onto a taken address succeeded")
	}
	if name, err := who(netip.MustParseAddr("127.0.0.1"), listen); err != nil || name != "a" {
		t.Fatalf("old service after a failed reload: %q, %v", name, err)
	}
}

// Restart with a snapshot: at least 99.9% of clients return to their
// server. Without the snapshot (the control) the same restart moves many,
// so the test can fail.
func TestRestartKeepsClientsWithSnapshot(t *testing.T) {
	b := []*backend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	listen := freeAddr(t)
	const clients = 1000
	run := func(snapshot string) float64 {
		cfg := fmt.Sprintf("snapshot: %q\nservices:\n", snapshot) + serviceYAML("web", listen, "rr", "    persistence: {}\n", b...)
		if snapshot == "" {
			cfg = "services:\n" + serviceYAML("web", listen, "rr", "    persistence: {}\n", b...)
		}
		p := New(mustConfig(t, cfg), Options{})
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		before := map[int]string{}
		for i := range clients {
			name, err := who(clientSrc(i), listen)
			if err != nil {
				t.Fatal(err)
			}
			before[i] = name
		}
		if err := p.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		p2 := New(mustConfig(t, cfg), Options{})
		if err := p2.Start(); err != nil {
			t.Fatal(err)
		}
		defer p2.Shutdown(context.Background())
		same := 0
		// Ask in reverse order, so that a scheduler without templates
		// assigns differently.
		for i := clients - 1; i >= 0; i-- {
			name, err := who(clientSrc(i), listen)
			if err != nil {
				t.Fatal(err)
			}
			if name == before[i] {
				same++
			}
		}
		return float64(same) / clients
	}
	if f := run(filepath.Join(t.TempDir(), "affinity.snap")); f < 0.999 {
		t.Errorf("with a snapshot %.4f of clients returned to their server, want >= 0.999", f)
	}
	if f := run(""); f > 0.9 {
		t.Errorf("control without a snapshot kept %.4f of clients: the test cannot tell", f)
	}
}

func clientSrc(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, 2, byte(i >> 8), byte(i)})
}
