// Package testenv builds network-namespace test hosts: client hosts with
// many source addresses, one load-balancer host with a VIP, and backend
// hosts whose default gateway is the load balancer, so that both full
// proxies and kernel NAT work. tether's tests, `tether demo`, the
// benchmarks and users testing their own setups use it.
//
// Addresses come from 198.18.0.0/15 (the benchmarking range) and exist only
// inside the namespaces; nothing is added to the root namespace. Links,
// addresses and routes are made through netlink, not by running ip.
//
// Privilege: root (CAP_SYS_ADMIN and CAP_NET_ADMIN). Tests that are not
// root can re-run themselves in a new user + network namespace through
// Main, where the kernel allows unprivileged user namespaces. Require
// skips a test that cannot have namespaces, and fails it instead when
// CI=true or TETHER_REQUIRE_NETNS=1.
package testenv
