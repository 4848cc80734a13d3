// Package hostnet is what tether changes or reads in the host's network
// stack outside nftables: the policy routing a TPROXY VIP that is not a
// local address needs (ip rule iif IF fwmark M lookup T, and local
// default routes in T), and the sysctls the data paths depend on
// (bridge-nf-call-iptables, ip_local_port_range), which it only reads.
//
// Everything here acts on the calling thread's network namespace; rules
// and routes need CAP_NET_ADMIN, reading sysctls needs nothing.
package hostnet
