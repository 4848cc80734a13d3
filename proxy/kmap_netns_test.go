package proxy

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/nft"
	"github.com/tetherlb/tether/testenv"
)

// kernelTemplates reads the kernel template map of the lb's first IPv4
// director service: client → choice mark.
func kernelTemplates(t *testing.T, env *testenv.Env) map[netip.Addr]uint32 {
	t.Helper()
	return kernelTemplatesOf(t, env, nftables.TableFamilyIPv4)
}

// kernelTemplatesOf is kernelTemplates in the table of family fam.
func kernelTemplatesOf(t *testing.T, env *testenv.Env, fam nftables.TableFamily) map[netip.Addr]uint32 {
	t.Helper()
	out := map[netip.Addr]uint32{}
	err := env.LB.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		elems, err := nft.ReadTemplates(c, fam, 0)
		for _, e := range elems {
			out[e.Client] = e.Mark
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// tableTemplates is what the kernel map should hold: each template of
// tether's table, by its server's choice mark in the service the test
// env's VIP:80 is.
func tableTemplates(p *Proxy) map[netip.Addr]uint32 {
	return tableTemplatesOf(p, config.ServiceKey{VIP: netip.AddrPortFrom(testenv.VIP, 80)})
}

// tableTemplatesOf is tableTemplates for the service of key.
func tableTemplatesOf(p *Proxy, key config.ServiceKey) map[netip.Addr]uint32 {
	dp := p.dir.Load()
	out := map[netip.Addr]uint32{}
	for _, tp := range p.Table().List(affinity.Filter{}) {
		out[tp.Client.Addr()] = dp.markFor[nft.ChoiceKey{Service: key, Server: tp.Server}]
	}
	return out
}

func flushConntrack(t *testing.T, env *testenv.Env) {
	t.Helper()
	if err := env.LB.FlushConntrack(); err != nil {
		t.Fatal(err)
	}
}

func directorStats(p *Proxy) (verdicts, adopted uint64) {
	s := p.dir.Load().d.Stats()
	return s.Verdicts, s.Adopted
}

// waitFor polls cond until it holds or d has passed, and says which.
func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			return false
		}
	}
	return true
}

// A returning client's flows never go up the queue: the kernel template map
// gives them their server. tether still counts them (conntrack's new
// events), so the template holds them; and every path that changes a
// template (bind, affinity rm, server set --down, reload) leaves the
// kernel map equal to tether's table.
func TestDirectorKernelTemplates(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 20, Backends: 3, Label: "kmap"})
	serveNames(t, env, 8080)
	cfg := fmt.Sprintf("mode: director\nservices:\n  - name: web\n    listen: %s:80\n    persistence: {timeout: 300s}\n    servers:\n%s", testenv.VIP, serverLines(env, 8080))
	p, _ := startInLB(t, env, cfg, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := env.Clients[0]
	vip := netip.AddrPortFrom(testenv.VIP, 80)
	first := map[netip.Addr]string{}
	var open []*testenv.Echo
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for round := range 3 {
		for _, src := range cl.Addrs {
			c, err := cl.DialEcho(ctx, src, vip)
			if err != nil {
				t.Fatalf("round %d, client %s: %v", round, src, err)
			}
			open = append(open, c)
			if round == 0 {
				first[src] = c.Name
			} else if c.Name != first[src] {
				t.Errorf("client %s: %s, then %s", src, first[src], c.Name)
			}
		}
		if round == 0 {
			// The map is written a moment after the binds (at most every
			// 20 ms): the returning rounds start once it is.
			p.dir.Load().kt.Sync()
		}
	}
	n := uint64(len(cl.Addrs))
	if !waitFor(5*time.Second, func() bool { _, a := directorStats(p); return a == 2*n }) {
		_, a := directorStats(p)
		t.Fatalf("%d flows adopted from the kernel map, want %d", a, 2*n)
	}
	if v, _ := directorStats(p); v != n {
		t.Errorf("%d flows went up the queue, want %d: one per new client", v, n)
	}
	active := 0
	for _, tp := range p.Table().List(affinity.Filter{}) {
		active += tp.Active
	}
	if active != 3*int(n) || p.DirectorFlows() != 3*int(n) {
		t.Errorf("templates hold %d flows, the director %d; want %d each", active, p.DirectorFlows(), 3*n)
	}
	same := func(step string) {
		t.Helper()
		want := tableTemplates(p)
		if got := kernelTemplates(t, env); !maps.Equal(got, want) || len(want) == 0 && step == "bind" {
			t.Errorf("after %s: kernel map %v, table %v", step, got, want)
		}
	}
	same("bind")
	if s := p.dir.Load().kt.Stats(); s.Changes < n || s.Batches == 0 {
		t.Errorf("mirror stats %+v: want at least %d changes written", s, n)
	}
	t.Logf("%d clients: %d templates in the kernel map", n, len(kernelTemplates(t, env)))

	// affinity rm: the kernel forgets the client before the call returns.
	gone := cl.Addrs[0]
	if k, err := p.RemoveTemplates(api.TemplateFilter{Client: gone.String()}); err != nil || k != 1 {
		t.Fatalf("RemoveTemplates: %d, %v", k, err)
	}
	if _, ok := kernelTemplates(t, env)[gone]; ok {
		t.Errorf("the kernel map still has %s after affinity rm", gone)
	}
	same("affinity rm")

	// server set --down drops the server's templates in the kernel too.
	down := first[cl.Addrs[1]]
	var downAddr netip.AddrPort
	for i, b := range env.Backends {
		if b.Name == down {
			downAddr = netip.AddrPortFrom(testenv.BackendAddr(i), 8080)
		}
	}
	if err := p.SetServer("web", downAddr.String(), api.ServerChange{Down: true}); err != nil {
		t.Fatal(err)
	}
	p.dir.Load().kt.Sync()
	for c, m := range kernelTemplates(t, env) {
		if m == p.dir.Load().markFor[nft.ChoiceKey{Service: config.ServiceKey{VIP: vip}, Server: downAddr}] {
			t.Errorf("client %s still goes to the down server %s in the kernel", c, downAddr)
		}
	}
	same("server set --down")

	// A reload makes the tables anew; the map is refilled in the same step.
	if err := p.Reload(mustConfig(t, cfg+"    scheduler: wlc\n")); err != nil {
		t.Fatal(err)
	}
	same("reload")
}

// Template lifetime with traffic that never reaches the queue: a template
// outlives its timeout while a flow stays open (the kernel element has no
// timeout while busy), and after the last close the kernel forgets the
// client a lag before tether does (a client back in between is queued
// and keeps its server), tether timeout after the close.
func TestDirectorKernelTemplateLifetime(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, Backends: 2, Label: "klife"})
	serveNames(t, env, 8080)
	const timeout, scan = 2 * time.Second, 300 * time.Millisecond
	cfg := fmt.Sprintf("mode: director\nservices:\n  - name: web\n    listen: %s:80\n    persistence: {timeout: 2s}\n    servers:\n%s", testenv.VIP, serverLines(env, 8080))
	p, _ := startInLB(t, env, cfg, Options{DirectorScanEvery: scan})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, src, vip := env.Clients[0], env.Clients[0].Addr(0), netip.AddrPortFrom(testenv.VIP, 80)
	long, err := cl.DialEcho(ctx, src, vip)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	// Past the timeout with the flow open: the kernel still has the client.
	time.Sleep(timeout + 500*time.Millisecond)
	c, err := cl.DialEcho(ctx, src, vip)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != long.Name {
		t.Errorf("with a flow open past the timeout: %s, then %s", long.Name, c.Name)
	}
	if v, _ := directorStats(p); v != 1 {
		t.Errorf("%d flows went up the queue, want 1 (the second came from the kernel map)", v)
	}
	c.Close()
	long.Close()
	// A director flow ends at its close (a conntrack scan finds it in
	// TIME_WAIT, at most one scan interval late), and the last close
	// starts the template's timer. The kernel forgets the client a lag
	// (two scan intervals) before tether does: a client that comes back
	// in between goes up the queue, which finds its template.
	// The scans' interval grows with their duration (a loaded host), and
	// the lag with it: the bound takes the longest seen.
	d := p.dir.Load().d
	lag := 2 * d.ScanInterval()
	closed := time.Now()
	if !waitFor(timeout+3*time.Second, func() bool {
		lag = max(lag, 2*d.ScanInterval())
		return len(kernelTemplates(t, env)) == 0
	}) {
		t.Fatalf("the kernel still has %v %v after the last close", kernelTemplates(t, env), time.Since(closed))
	}
	if took := time.Since(closed); took < timeout-lag-100*time.Millisecond {
		t.Errorf("the kernel forgot the client %v after the last close, before the %v timeout less the %v lag", took, timeout, lag)
	}
	if len(p.Table().List(affinity.Filter{})) != 1 {
		t.Fatalf("tether forgot the client with the kernel, not %v after it", lag)
	}
	back, err := cl.DialEcho(ctx, src, vip)
	if err != nil {
		t.Fatal(err)
	}
	back.Close()
	if v, _ := directorStats(p); back.Name != long.Name || v != 2 {
		t.Errorf("back in the lag: %s (first %s), %d flows queued (want 2: this one)", back.Name, long.Name, v)
	}
	closed = time.Now()
	if !waitFor(timeout+3*time.Second, func() bool { return len(p.Table().List(affinity.Filter{})) == 0 }) {
		t.Fatalf("tether's table still has %v after the timeout", p.Table().List(affinity.Filter{}))
	}
	if took := time.Since(closed); took < timeout {
		t.Errorf("tether forgot the client %v after the last close, before the %v timeout", took, timeout)
	}
	if n := len(kernelTemplates(t, env)); n != 0 {
		t.Errorf("the kernel has %d templates after tether forgot the client", n)
	}
}

// The table's bound bounds the kernel map: more clients than the table
// holds leave the map at the bound, equal to the table (an evicted
// template's element goes with it).
func TestDirectorKernelTemplatesBounded(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 60, Backends: 2, Label: "kbound"})
	serveNames(t, env, 8080)
	const bound = 16
	cfg := fmt.Sprintf("mode: director\naffinity: {capacity: %d}\nservices:\n  - name: web\n    listen: %s:80\n    persistence: {}\n    servers:\n%s", bound, testenv.VIP, serverLines(env, 8080))
	p, _ := startInLB(t, env, cfg, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, src := range env.Clients[0].Addrs {
		c, err := env.Clients[0].DialEcho(ctx, src, netip.AddrPortFrom(testenv.VIP, 80))
		if err != nil {
			t.Fatal(err)
		}
		c.Close() // the flow ends at its close: its template may go at the bound
	}
	if !waitFor(5*time.Second, func() bool { return p.DirectorFlows() == 0 }) {
		t.Fatalf("%d flows still open", p.DirectorFlows())
	}
	p.dir.Load().kt.Sync()
	got, want := kernelTemplates(t, env), tableTemplates(p)
	if len(want) != bound || !maps.Equal(got, want) {
		t.Errorf("kernel map %d %v, table %d %v; want both the %d the table keeps", len(got), got, len(want), want, bound)
	}
}

// The director learns of the flows the kernel map serves from conntrack
// scans: a client whose connections are all short and served by the
// kernel keeps its template past the timeout (each closed flow a scan
// finds restarts the timer), and an open one is counted on its template
// and holds it, although none of them ever reaches the queue.
func TestDirectorScansCountKernelFlows(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, Backends: 2, Label: "kscan"})
	serveNames(t, env, 8080)
	const timeout = 2 * time.Second
	cfg := fmt.Sprintf("mode: director\nservices:\n  - name: web\n    listen: %s:80\n    persistence: {timeout: 2s}\n    servers:\n%s", testenv.VIP, serverLines(env, 8080))
	p, _ := startInLB(t, env, cfg, Options{DirectorScanEvery: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, src, vip := env.Clients[0], env.Clients[0].Addr(0), netip.AddrPortFrom(testenv.VIP, 80)
	first, err := cl.DialEcho(ctx, src, vip)
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	if !waitFor(time.Second, func() bool { return len(kernelTemplates(t, env)) == 1 }) {
		t.Fatal("the first connection's template never reached the kernel map")
	}
	// Short connections every 600 ms for three timeouts.
	for end := time.Now().Add(3 * timeout); time.Now().Before(end); time.Sleep(600 * time.Millisecond) {
		c, err := cl.DialEcho(ctx, src, vip)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if c.Name != first.Name {
			t.Fatalf("a short connection went to %s, the first to %s", c.Name, first.Name)
		}
	}
	if v, _ := directorStats(p); v != 1 {
		t.Fatalf("%d flows went up the queue, want 1: the template expired between short kernel-served connections", v)
	}
	if p.dir.Load().d.Stats().Seen == 0 {
		t.Error("no closed kernel-served flow was seen by a scan")
	}
	// An open kernel-served flow: adopted by a scan, counted, and it
	// holds the template past the timeout.
	long, err := cl.DialEcho(ctx, src, vip)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	active := func() int {
		for _, tp := range p.Table().List(affinity.Filter{}) {
			return tp.Active
		}
		return -1
	}
	if !waitFor(2*time.Second, func() bool { return active() == 1 }) {
		t.Fatalf("the open kernel-served flow: template active %d, want 1", active())
	}
	time.Sleep(timeout + 500*time.Millisecond)
	if len(p.Table().List(affinity.Filter{})) != 1 || len(kernelTemplates(t, env)) != 1 {
		t.Fatalf("with a flow open past the timeout: table %v, kernel %v", p.Table().List(affinity.Filter{}), kernelTemplates(t, env))
	}
	long.Close()
	if !waitFor(2*time.Second, func() bool { return active() == 0 }) {
		t.Errorf("after the close: template active %d, want 0", active())
	}
	if v, _ := directorStats(p); v != 1 {
		t.Errorf("%d flows went up the queue, want 1", v)
	}
}
