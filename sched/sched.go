package sched

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/tetherlb/tether/internal/fmix"
)

// Server is what a scheduler reads of a real server. Implementations are
// comparable (a pointer), so that a connection's already-tried servers
// can be skipped.
type Server interface {
	comparable
	// Weight is the weight in force; 0 takes no new clients.
	Weight() int
	// Conns is the number of open connections.
	Conns() int
	// Available says the server may take a new client now.
	Available() bool
	// Address names the server; mh's permutations are derived from it,
	// so that instances with the same servers agree.
	Address() netip.AddrPort
}

// Scheduler chooses a real server for a new client. Pick returns the zero
// S (nil) when no server is available; it never returns a server in skip
// (the ones this connection already failed to reach).
type Scheduler[S Server] interface {
	Pick(client netip.Addr, skip []S) S
}

// Name is one of IPVS's scheduler names.
type Name string

// The schedulers, with IPVS's names and definitions.
const (
	RoundRobin              Name = "rr"
	WeightedRoundRobin      Name = "wrr"
	LeastConnection         Name = "lc"
	WeightedLeastConnection Name = "wlc"
	SourceHashing           Name = "sh"
	MaglevHashing           Name = "mh"
	ShortestExpectedDelay   Name = "sed"
	NeverQueue              Name = "nq"
	// Default is ipvsadm's.
	Default = WeightedLeastConnection
)

// Names are every scheduler, in ipvsadm's order.
var Names = []Name{RoundRobin, WeightedRoundRobin, LeastConnection, WeightedLeastConnection, SourceHashing, MaglevHashing, ShortestExpectedDelay, NeverQueue}

// Valid reports whether n names a scheduler.
func (n Name) Valid() bool { return slices.Contains(Names, n) }

// New builds the named scheduler over servers; the empty name is Default.
func New[S Server](name Name, servers []S) (Scheduler[S], error) {
	switch name {
	case RoundRobin:
		return newRR(servers), nil
	case WeightedRoundRobin:
		return newWRR(servers), nil
	case LeastConnection:
		return lc[S](servers), nil
	case WeightedLeastConnection, "":
		return wlc[S](servers), nil
	case SourceHashing:
		return newSH(servers), nil
	case MaglevHashing:
		return newMH(servers), nil
	case ShortestExpectedDelay:
		return sed[S](servers), nil
	case NeverQueue:
		return nq[S](servers), nil
	}
	return nil, fmt.Errorf("unknown scheduler %q", name)
}

// usable: s may take this client (available and not already tried).
func usable[S Server](s S, skip []S) bool {
	return s.Available() && !slices.Contains(skip, s)
}

// mhFallbackSeed seeds the rehash of mh's fallback, apart from the
// permutation seeds.
const mhFallbackSeed uint64 = 0x9e3779b97f4a7c15

// hashAddr hashes a client address the same way in every tether instance
// (no random seed), so that sh and mh agree across instances.
func hashAddr(a netip.Addr, seed uint64) uint64 {
	b := a.Unmap().As16()
	h := seed ^ binary.LittleEndian.Uint64(b[:8])*0xff51afd7ed558ccd ^ binary.LittleEndian.Uint64(b[8:])
	return fmix.Mix64(h)
}

func hashAddrPort(ap netip.AddrPort, seed uint64) uint64 {
	return fmix.Mix64(hashAddr(ap.Addr(), seed) ^ uint64(ap.Port())*0xc4ceb9fe1a85ec53)
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
