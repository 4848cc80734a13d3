// Package tcploop accepts, connects and relays TCP connections on raw
// descriptors from a few event loops, one per CPU, instead of two
// goroutines a connection: HAProxy's and nginx's design, for the
// connection rate.
//
// A loop owns an epoll instance holding its connections' sockets
// (edge-triggered) and the listeners it accepts from. Right after work it
// waits for more in that set itself, its thread blocked in the kernel as
// HAProxy's threads are, but for a millisecond at most; then it parks in
// the Go runtime's own poller, so the rest of the program keeps its
// processors (a busy loop holds its own, yielding every 5 ms: cmd/tether
// gives the scheduler a processor more than loops when other goroutines
// carry traffic). What the runtime polls is a second epoll instance that
// holds the set with interest only while the loop is parked: the set's
// events do not wake the runtime's poller thread while the loop is awake
// to take them itself. When it always has something to do it
// yields every few milliseconds, before the runtime would preempt it. A
// loop that holds clearly more connections than the least loaded one hands
// new ones to it (balance.go). A connection costs about 15 system calls
// from accept to close: the peer address comes from accept4; a connect is
// non-blocking, and its success is the socket turning writable or the
// client's first bytes (read before the client's socket is registered)
// going out right after connect, so that on the host's own network the
// request follows the connection without another epoll_wait; SO_ERROR is
// read only on a failure; a short read means the socket is drained (an
// edge-triggered registration reports every later arrival) and, once the
// peer's FIN is in, that it sent no more, and closing a socket removes it
// from epoll. Once a side has shut down, the last bytes passed to the
// other go with MSG_MORE, so that the FIN passed on after them rides in
// the same segment.
//
// The copy is package tcprelay's: small messages through a buffer the loop
// lends only while bytes wait, and a direction whose read fills the buffer
// takes a splice pipe from tcprelay's bounded pool. Half-close is honoured
// each way; an idle timeout ends a connection silent both ways, half-closed
// ones included; a connect has its own timeout. What to do with a
// connection (which server, or refuse it) is decided by a Service, called
// on the loop: it must not block.
//
// A loop also reads descriptors other packages own, through a Watcher
// (watch.go): the proxy's UDP services and their flows' sockets, so that
// UDP shares the loops as it does in nginx and HAProxy, and needs neither
// a goroutine a flow nor a processor of its own.
//
// It needs no privilege.
package tcploop
