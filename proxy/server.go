package proxy

import (
	"net/netip"
	"sync/atomic"
	"time"
)

// Server is a real server of one service, with the live counts that the
// connection-counting schedulers and the limits read.
type Server struct {
	Addr netip.AddrPort

	weight   atomic.Int32
	maxConns atomic.Int64 // 0: no limit; a reload changes it under load

	conns       atomic.Int64 // open connections
	failedUntil atomic.Int64 // unix ns; passive failure: not picked before
	down        atomic.Bool  // reported down (health check, issue 8)

	accepted, failed  atomic.Uint64
	bytesIn, bytesOut atomic.Uint64 // from and to the client
}

func newServer(addr netip.AddrPort, weight int, maxConns int) *Server {
	s := &Server{Addr: addr}
	s.weight.Store(int32(weight))
	s.maxConns.Store(int64(maxConns))
	return s
}

// Weight is the server's weight; 0 is quiescent.
func (s *Server) Weight() int { return int(s.weight.Load()) }

// Conns is the number of connections open to the server.
func (s *Server) Conns() int { return int(s.conns.Load()) }

// available says the server may take a new client: weight above 0, not
// down, not failed recently, not at its connection limit.
func (s *Server) available() bool {
	if s.weight.Load() <= 0 || s.down.Load() {
		return false
	}
	if m := s.maxConns.Load(); m > 0 && s.conns.Load() >= m {
		return false
	}
	if f := s.failedUntil.Load(); f != 0 && time.Now().UnixNano() < f {
		return false
	}
	return true
}

// skipped reports whether s is in skip: servers already tried for this
// connection.
func skipped(s *Server, skip []*Server) bool {
	for _, k := range skip {
		if k == s {
			return true
		}
	}
	return false
}
