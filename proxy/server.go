package proxy

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/tetherlb/tether/connlimit"
)

// server is a real server of one service, with the live counts that the
// connection-counting schedulers and the limits read.
type server struct {
	Addr netip.AddrPort

	weight      atomic.Int32    // configured, or set by `tether server set`
	conns       connlimit.Count // open connections, against max_connections
	failedUntil atomic.Int64    // unix ns; passive failure: not picked before
	down        atomic.Bool     // failed its health check
	inhibited   atomic.Bool     // failed its health check, inhibit_on_failure: weight 0
	adminDown   atomic.Bool     // tether server set --down
	drained     atomic.Bool     // tether server set --drain: weight 0

	accepted, failed  atomic.Uint64
	bytesIn, bytesOut atomic.Uint64 // from and to the client
	sent              serverSent    // what EmitMetrics reported of them (events.go)
}

func newServer(addr netip.AddrPort, weight int) *server {
	s := &server{Addr: addr}
	s.weight.Store(int32(weight))
	return s
}

// Weight is the server's weight in force: 0 (quiescent) while drained or
// inhibited by a failed check.
func (s *server) Weight() int {
	if s.drained.Load() || s.inhibited.Load() {
		return 0
	}
	return int(s.weight.Load())
}

// Conns is the number of connections open to the server.
func (s *server) Conns() int { return int(s.conns.Load()) }

// isDown: the server takes no clients and holds no templates.
func (s *server) isDown() bool { return s.down.Load() || s.adminDown.Load() }

// Address is the server's address (sched.Server).
func (s *server) Address() netip.AddrPort { return s.Addr }

// Available says the server may take a new client: weight above 0, not
// down, not failed recently, not full by its connection thresholds.
func (s *server) Available() bool {
	if s.Weight() <= 0 || s.isDown() {
		return false
	}
	if s.conns.Full() {
		return false
	}
	if f := s.failedUntil.Load(); f != 0 && time.Now().UnixNano() < f {
		return false
	}
	return true
}

// State is the server's state as `tether ls` shows it.
func (s *server) State() string {
	switch {
	case s.adminDown.Load():
		return "maint"
	case s.down.Load():
		return "down"
	case s.inhibited.Load():
		return "inhibited"
	case s.drained.Load():
		return "drain"
	case s.failedUntil.Load() > time.Now().UnixNano():
		return "failed"
	case s.conns.Full():
		return "full" // at max_connections, not yet back under resume_connections
	}
	return "up"
}
