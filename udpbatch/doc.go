// Package udpbatch moves datagrams in batches: up to n per recvmmsg(2) or
// sendmmsg(2) on a raw socket (syscall.RawConn), with their sources, and
// without allocating per datagram (x/net's ReadBatch allocates a net.Addr
// per datagram). A Relay reads what is queued on a connected socket into a
// batch it borrows from a Pool only while there is something to read, so
// that a million idle flows hold no buffers.
//
// On a net.UDPConn's RawConn the calls wait in the Go runtime's poller,
// for a goroutine; on a Socket (Dial, DialFrom, NewSocket), which the
// runtime's poller does not watch, they do not, for an event loop that
// waits for the socket itself. It needs no privilege, but DialFrom's
// transparent sockets need CAP_NET_ADMIN.
package udpbatch
