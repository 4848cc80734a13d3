// Package proxy runs virtual services: it accepts clients, chooses a real
// server through the persistence table (package affinity) and a scheduler,
// and copies the bytes.
//
// The TCP data path is io.Copy between two *net.TCPConn, so the Go runtime
// moves the bytes with splice(2) through a pipe and they never enter user
// space; the conns are kept unwrapped for that reason. Plain address
// services need no privilege (a port below 1024 needs
// CAP_NET_BIND_SERVICE).
//
// The schedulers are IPVS's, with IPVS's definitions: rr, wrr, lc, wlc, sh,
// mh, sed and nq, one file each.
//
// UDP flows are read and written in batches (recvmmsg, sendmmsg: mmsg.go).
// The NFQUEUE director (director.go) decides a flow's first packet and
// leaves the rest to the kernel. Health checks (package health) set the
// servers' state (health.go); Status, SetServer and the template calls
// (status.go) are what the admin API serves.
package proxy
