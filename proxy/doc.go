// Package proxy runs virtual services: their lifecycle and reloads, the
// real servers' live state, one server-choice function for every data
// path, and the socket data paths themselves.
//
//   - proxy.go: New, Start, Reload (plan, then commit), Shutdown.
//   - control.go: the control loop that runs every configuration and
//     kernel change, so that no lock is held across a system call.
//   - service.go, server.go: a service's immutable state; a real server's
//     counts and health flags.
//   - choose.go: choose, the template-then-scheduler decision that TCP,
//     UDP and the director all use; the sorry server; passive failure.
//   - tcp.go, splice.go: accept, connect (with retries to the next
//     server), and the copy: io.Copy between two *net.TCPConn, which the
//     runtime runs as splice(2), half-close honoured.
//   - udp.go, flowtable.go: UDP flows per client, bounded (package
//     udpbatch moves the datagrams in batches).
//   - transparent.go, transparent_udp.go: firewall-mark services through
//     TPROXY (nftables table from package nft, policy routing from
//     package hostnet).
//   - director.go: glue to package director (NFQUEUE) and to nft's
//     director tables.
//   - health.go, status.go, metrics.go: health changes, what the admin API
//     serves (package api's types), gauges.
//
// Plain address services need no privilege (a port below 1024 needs
// CAP_NET_BIND_SERVICE); mark services and the director need
// CAP_NET_ADMIN.
package proxy
