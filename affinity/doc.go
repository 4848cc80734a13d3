// Package affinity remembers which real server each client belongs to:
// Linux Virtual Server's persistence templates, rebuilt as a bounded,
// expiring, sharded table.
//
// A template binds (service, masked client address) to a real server. The
// semantics are IPVS's, with one improvement: a template never expires while
// a connection made through it is open, and expires Timeout after the later
// of its last new connection and the close of its last connection, exact to
// the table's 10 ms clock (IPVS re-arms in 60 s steps instead).
//
// The table is bounded by entries. At the bound an idle template goes
// before any with open connections, and among idle ones, approximately the
// least recently used, clients that came back after the others (sampled
// eviction, as Redis's): a flood of spoofed sources can cost idle clients
// their affinity, returning ones last, but never grows memory.
//
// A returning client's connection and its close take no lock (fast.go):
// each changes its template's own slot with compare-and-swaps, so two
// CPUs' hits never meet on a shard's lock. Everything else (a miss, a
// bind, an eviction, expiry, invalidation, a change a journal follower
// must hear of) runs under the shard's lock, and a lock holder that moves
// or removes a template freezes it first, so that a lock-free change to
// it fails and retries under the lock instead of being lost.
//
// A table can keep a journal of its templates' changes (journal.go) for a
// mirror to follow: the director writes them into the kernel.
//
// The package needs no privilege and makes no system calls on the lookup
// path. It is used by the proxy data paths and by `tether affinity`.
package affinity
