// Command tether is a Linux L4 load balancer that keeps each client on the
// same real server: Linux Virtual Server's persistence and firewall marks,
// without the IPVS kernel module.
//
// Plain TCP services need no privilege; firewall-mark services, the
// transparent proxy and the NFQUEUE director need CAP_NET_ADMIN (root).
package main
