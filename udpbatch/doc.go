// Package udpbatch moves datagrams in batches: up to n per recvmmsg(2) or
// sendmmsg(2) on a raw socket (syscall.RawConn), with their sources, and
// without allocating per datagram (x/net's ReadBatch allocates a net.Addr
// per datagram). A Relay reads what is queued on a connected socket into a
// batch it borrows from a Pool only while there is something to read, so
// that a million idle flows hold no buffers. It needs no privilege.
package udpbatch
