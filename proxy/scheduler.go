package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Scheduler chooses a real server for a new client. Pick returns nil when
// no server is available; it never returns a server in skip (the ones this
// connection already failed to reach). A Scheduler is built for one set of
// servers and weights, and rebuilt when they change.
type Scheduler interface {
	Pick(client netip.Addr, skip []*Server) *Server
}

// SchedulerName is one of IPVS's scheduler names.
type SchedulerName string

// The schedulers, with IPVS's names and definitions.
const (
	RoundRobin              SchedulerName = "rr"
	WeightedRoundRobin      SchedulerName = "wrr"
	LeastConnection         SchedulerName = "lc"
	WeightedLeastConnection SchedulerName = "wlc"
	SourceHashing           SchedulerName = "sh"
	MaglevHashing           SchedulerName = "mh"
	ShortestExpectedDelay   SchedulerName = "sed"
	NeverQueue              SchedulerName = "nq"
	DefaultScheduler                      = WeightedLeastConnection
)

// errNoServer: every server is down, quiescent, full or already tried.
var errNoServer = errors.New("no real server is available")

// errBelowQuorum: the available servers' weights are below the quorum.
var errBelowQuorum = errors.New("the service is below its quorum")

// mhFallbackSeed seeds the rehash of mh's fallback, apart from the
// permutation seeds.
const mhFallbackSeed uint64 = 0x9e3779b97f4a7c15

// NewScheduler builds the named scheduler over servers.
func NewScheduler(name SchedulerName, servers []*Server) (Scheduler, error) {
	switch name {
	case RoundRobin:
		return newRR(servers), nil
	case WeightedRoundRobin:
		return newWRR(servers), nil
	case LeastConnection:
		return lc(servers), nil
	case WeightedLeastConnection, "":
		return wlc(servers), nil
	case SourceHashing:
		return newSH(servers), nil
	case MaglevHashing:
		return newMH(servers), nil
	case ShortestExpectedDelay:
		return sed(servers), nil
	case NeverQueue:
		return nq(servers), nil
	}
	return nil, fmt.Errorf("unknown scheduler %q", name)
}

// hashAddr hashes a client address the same way in every tether instance
// (no random seed), so that sh and mh agree across instances.
func hashAddr(a netip.Addr, seed uint64) uint64 {
	b := a.Unmap().As16()
	h := seed ^ binary.LittleEndian.Uint64(b[:8])*0xff51afd7ed558ccd ^ binary.LittleEndian.Uint64(b[8:])
	return fmix64(h)
}

func hashAddrPort(ap netip.AddrPort, seed uint64) uint64 {
	return fmix64(hashAddr(ap.Addr(), seed) ^ uint64(ap.Port())*0xc4ceb9fe1a85ec53)
}

func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
