package cluster

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"

	"github.com/tetherlb/tether/api"
)

// Server changes an operator makes on one instance (tether server set:
// weight, drain, down, up) apply on every instance, as an operator
// draining a server expects. Health checks stay each instance's own.
//
//	server  nonce u64 | service name (len u8, bytes) | server (len u8, bytes) | op u8 (1 weight, 2 drain, 3 up, 4 down) | weight u16

const kindServer = 4

// ServerUpdate is a peer's server change, for the owner to apply as if it
// had been made here.
type ServerUpdate struct {
	Service, Server string
	Change          api.ServerChange
	From            string // the peer's name
}

func appendServerChange(b []byte, nonce uint64, service, server string, ch api.ServerChange) []byte {
	b = binary.BigEndian.AppendUint64(b, nonce)
	b = append(append(b, byte(len(service))), service...)
	b = append(append(b, byte(len(server))), server...)
	op, w := byte(0), 0
	switch {
	case ch.Weight != nil:
		op, w = 1, *ch.Weight
	case ch.Drain:
		op = 2
	case ch.Up:
		op = 3
	case ch.Down:
		op = 4
	}
	return binary.BigEndian.AppendUint16(append(b, op), uint16(w))
}

func (r *reader) serverChange() (service, server string, ch api.ServerChange) {
	r.take(8, "nonce")
	service = string(r.take(int(r.u8("service name length")), "service name"))
	server = string(r.take(int(r.u8("server length")), "server"))
	op := r.u8("operation")
	w := int(r.u16("weight"))
	switch {
	case r.err != nil:
	case service == "" || server == "":
		r.fail("server change without service or server")
	case op == 1:
		ch.Weight = &w
	case op == 2:
		ch.Drain = true
	case op == 3:
		ch.Up = true
	case op == 4:
		ch.Down = true
	default:
		r.off -= 3
		r.fail(fmt.Sprintf("server operation %d", op))
	}
	return service, server, ch
}

// ServerChanged tells every peer of a server change made here (after it
// succeeded here). Names longer than 255 bytes are not sent.
func (n *Node) ServerChanged(service, server string, ch api.ServerChange) {
	if len(service) > 255 || len(server) > 255 {
		return
	}
	n.broadcast(appendServerChange(appendHeader(nil, kindServer, n.id), rand.Uint64(), service, server, ch))
}

// serverUpdate hands a peer's server change to the owner, without
// blocking memberlist's receive loop: a full channel drops it, logged.
func (n *Node) serverUpdate(sender uint32, service, server string, ch api.ServerChange) {
	if n.cfg.ServerUpdates == nil {
		return
	}
	select {
	case n.cfg.ServerUpdates <- ServerUpdate{Service: service, Server: server, Change: ch, From: n.peerName(sender)}:
	default:
		n.st.dropped.Add(1)
		n.log.Warn("cluster: a peer's server change dropped: the owner is behind", "service", service, "server", server)
	}
}
