// Package tcprelay copies a TCP connection both ways, one goroutine a
// direction. Small messages go through a pooled buffer, borrowed only once
// a socket is readable; a direction that carries bulk (a read fills the
// buffer) takes a splice pipe from a bounded pool and moves the rest with
// splice(2), a megabyte a call, so that the bytes never enter user space
// (HAProxy's splice-auto). A connection holds at most four descriptors:
// its two sockets and one pipe. Half-close is honoured and an idle timeout
// ends a connection silent both ways, half-closed ones included. It needs
// no privilege.
package tcprelay
