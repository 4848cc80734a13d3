// Package proxy runs virtual services: their lifecycle and reloads, the
// real servers' live state, one server-choice function for every data
// path, and the socket data paths themselves.
//
//   - proxy.go: New, Start, Reload, Shutdown; plan.go: a configuration
//     worked out (listeners opened, caps derived by package budget), then
//     committed.
//   - control.go: the control loop that runs every configuration and
//     kernel change, so that no lock is held across a system call;
//     snapshot.go: the periodic snapshot writer.
//   - service.go, server.go: a service's immutable state; a real server's
//     counts (package connlimit: its thresholds) and health flags.
//   - choose.go: choose, the template-then-scheduler decision that TCP,
//     UDP and the director all use; the sorry server; passive failure.
//   - loop.go: TCP connections on the event loops (package tcploop): the
//     connection cap, access lists, PROXY headers sent, connect with
//     retries to the next server, as callbacks the loop makes; listeners
//     opened one per loop with SO_REUSEPORT.
//   - handover.go: a hot upgrade's sockets handed to a new process and
//     taken over there, the templates merged.
//   - tcp.go: the same in a goroutine per connection, for --tcp-loops -1
//     and for sources trusted to send a PROXY header (package
//     proxyheader reads it): accept (package acceptloop) and the copy
//     (package tcprelay: buffers, then splice for bulk).
//   - udp.go: UDP flows per client, bounded (package lruset), the datagrams
//     moved in batches (package udpbatch); udploop.go: a service's
//     socket for each event loop (SO_REUSEPORT) and its flows' sockets
//     read there (tcploop's watches), outside the Go runtime's poller;
//     udp.go's goroutines serve them with the loops off.
//   - transparent.go, transparent_udp.go: firewall-mark services through
//     TPROXY (nftables table from package nft, policy routing from
//     package hostnet); transparent_udploop.go: their UDP on the event
//     loops.
//   - director.go: glue to package director (NFQUEUE) and to nft's
//     director tables.
//   - health.go, status.go, metrics.go, accesslog.go: health changes, what
//     the admin API serves (package api's types), gauges, the access log.
//
// Plain address services need no privilege (a port below 1024 needs
// CAP_NET_BIND_SERVICE); mark services and the director need
// CAP_NET_ADMIN.
package proxy
