package tcploop

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// The loops set TCP_NODELAY once on each listener, not on every accepted
// socket: Linux copies it into the sockets the listener accepts. This
// checks that kernel behaviour, with a listener without it as the
// control.
func TestAcceptedSocketInheritsNoDelay(t *testing.T) {
	for _, on := range []bool{true, false} {
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		rc, err := ln.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		if on {
			if err := setNoDelay(rc); err != nil {
				t.Fatal(err)
			}
		}
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var nfd int
		var aerr error
		if err := rc.Control(func(fd uintptr) { // a listener's RawConn has no Read
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, aerr = unix.Poll(pfd, 5000); aerr == nil {
				nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC)
			}
		}); err != nil || aerr != nil {
			t.Fatal(err, aerr)
		}
		v, err := unix.GetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
		unix.Close(nfd)
		if err != nil {
			t.Fatal(err)
		}
		if got := v != 0; got != on {
			t.Errorf("listener with TCP_NODELAY %v: accepted socket has it %v", on, got)
		}
	}
}
