// Package udpbatch moves datagrams in batches: up to n per recvmmsg(2) or
// sendmmsg(2) on a raw socket (syscall.RawConn), with their sources, and
// without allocating per datagram (x/net's ReadBatch allocates a net.Addr
// per datagram). A Relay reads what is queued on a connected socket into a
// batch it borrows from a Pool only while there is something to read, so
// that a million idle flows hold no buffers.
//
// Each call comes in two kinds: one that waits in the Go runtime's poller
// (Read, Write, Next), for a goroutine, and one that does not (ReadNow,
// WriteToNow, NextNow, RecvMsg), for an event loop that waits for the
// socket itself; Dial and DialFrom open such a loop's sockets outside the
// runtime's poller. It needs no privilege, but DialFrom's transparent
// sockets need CAP_NET_ADMIN.
package udpbatch
