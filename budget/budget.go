package budget

import (
	"fmt"
	"strings"

	"github.com/tetherlb/tether/config"
	"golang.org/x/sys/unix"
)

// Budget is the process's descriptor limit and what is kept from clients.
type Budget struct {
	Limit   int // RLIMIT_NOFILE in force
	Reserve int // kept for the admin socket, health checks, listeners, netlink
}

// Of is the budget of a limit: the reserve is a sixteenth, at least 64.
func Of(limit int) Budget {
	return Budget{Limit: limit, Reserve: min(max(64, limit/16), limit)}
}

// Clients is what connections, flows, pipes and datagrams in flight share.
func (b Budget) Clients() int { return b.Limit - b.Reserve }

// Read raises the soft descriptor limit to the hard one and returns the
// budget of the limit in force then.
func Read() (Budget, error) {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		return Budget{}, fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	if r.Cur < r.Max {
		up := r
		up.Cur = r.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &up); err == nil {
			r = up
		}
	}
	limit := r.Cur
	if limit > 1<<30 { // unlimited or absurd: bound what is derived from it
		limit = 1 << 30
	}
	return Of(int(limit)), nil
}

// What each holds, in descriptors.
const (
	PerConn      = 2 // a TCP connection: the client's socket and the server's
	PerPipe      = 2 // a splice pipe
	PerFlow      = 2 // a UDP flow, at most (transparent: a socket each way)
	PerOnePacket = 1 // a one-packet datagram in flight: its socket to the server
)

// MaxOnePacket bounds one-packet datagrams in flight whatever the limit:
// each waits up to 5 s for its reply on a goroutine of its own.
const MaxOnePacket = 4096

// Caps are the bounds tether runs with: the config's own where it sets
// them, the rest derived from the budget.
type Caps struct {
	Budget Budget
	// Conns are the open TCP connections per service (socket and
	// transparent proxy), by service; 0 for director and UDP services.
	Conns map[config.ServiceKey]int
	// Flows are the UDP flows per UDP service.
	Flows map[config.ServiceKey]int
	// UDPFlows bounds the UDP flows of all services, transparent included.
	UDPFlows int
	// OnePacket bounds one-packet datagrams in flight, all services.
	OnePacket int
	// Pipes bounds the splice pipes held at once.
	Pipes int
}

// Derive computes the caps of cfg within b. The clients' share is split:
// half for TCP connections, an eighth for splice pipes, a quarter for UDP
// flows, a sixteenth for one-packet datagrams. Services without their own
// cap share their path's part equally, so that a flood on one cannot take
// another's. An error names the explicit caps that need more descriptors
// than b has.
func Derive(cfg *config.File, b Budget) (Caps, error) {
	c := b.Clients()
	caps := Caps{Budget: b, Conns: map[config.ServiceKey]int{}, Flows: map[config.ServiceKey]int{}}
	caps.Pipes = max(c/8/PerPipe, 1)
	caps.OnePacket = max(min(c/16/PerOnePacket, MaxOnePacket), 1)
	caps.UDPFlows = cfg.UDPMaxFlows
	if caps.UDPFlows == 0 {
		caps.UDPFlows = max(c/4/PerFlow, 1)
	}

	var tcpFree, udpFree []config.ServiceKey
	explicitConns, explicitFlows := 0, 0
	for _, s := range cfg.Services {
		k := s.Key()
		switch {
		case cfg.ServiceMode(s) == config.ModeDirector:
			// The kernel carries director flows: no descriptors.
		case s.Protocol == config.UDP || s.OnePacket:
			if n := s.Limits.MaxFlows; n > 0 {
				caps.Flows[k], explicitFlows = n, explicitFlows+n
			} else {
				udpFree = append(udpFree, k)
			}
		default:
			if n := s.Limits.MaxConnections; n > 0 {
				caps.Conns[k], explicitConns = n, explicitConns+n
			} else {
				tcpFree = append(tcpFree, k)
			}
		}
	}
	// A mark service's class may cover UDP too: its flows count in
	// UDPFlows, which bounds them all.
	need := explicitConns*PerConn + min(explicitFlows, caps.UDPFlows)*PerFlow
	if cfg.UDPMaxFlows > 0 {
		need = explicitConns*PerConn + cfg.UDPMaxFlows*PerFlow
	}
	if need > c {
		return Caps{}, &Error{Need: need, Budget: b, Fields: explicitFields(cfg)}
	}
	if len(tcpFree) > 0 {
		share := max(c/2-explicitConns*PerConn, c/8) / PerConn / len(tcpFree)
		for _, k := range tcpFree {
			caps.Conns[k] = max(share, 1)
		}
	}
	if len(udpFree) > 0 {
		share := caps.UDPFlows / len(udpFree)
		for _, k := range udpFree {
			caps.Flows[k] = max(share, 1)
		}
	}
	return caps, nil
}

// explicitFields names the caps a config sets itself.
func explicitFields(cfg *config.File) []string {
	var out []string
	if cfg.UDPMaxFlows > 0 {
		out = append(out, fmt.Sprintf("udp_max_flows %d", cfg.UDPMaxFlows))
	}
	for i, s := range cfg.Services {
		if n := s.Limits.MaxConnections; n > 0 {
			out = append(out, fmt.Sprintf("services[%d].limits.max_connections %d", i, n))
		}
		if n := s.Limits.MaxFlows; n > 0 {
			out = append(out, fmt.Sprintf("services[%d].limits.max_flows %d", i, n))
		}
	}
	return out
}

// Error says that the config's own caps need more descriptors than the
// process may have.
type Error struct {
	Need   int
	Budget Budget
	Fields []string
}

func (e *Error) Error() string {
	return fmt.Sprintf("the configured limits need %d file descriptors (%d per TCP connection, up to %d per UDP flow): %s; "+
		"tether may use %d of its %d (RLIMIT_NOFILE, less %d kept for the admin socket, health checks and listeners): "+
		"raise the limit (ulimit -n, systemd LimitNOFILE=) or lower these",
		e.Need, PerConn, PerFlow, strings.Join(e.Fields, ", "), e.Budget.Clients(), e.Budget.Limit, e.Budget.Reserve)
}
