// Package sched holds IPVS's schedulers with IPVS's definitions: rr, wrr,
// lc, wlc, sh, mh, sed and nq, one file each. A scheduler is built for one
// set of servers and weights and rebuilt when they change; it reads each
// server's live state (weight, open connections, availability) through
// the small Server interface, so it knows nothing of sockets or templates.
// It needs no privilege.
package sched
