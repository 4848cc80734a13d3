package proxyheader

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/pires/go-proxyproto"
	"github.com/tetherlb/tether/config"
	"golang.org/x/sys/unix"
)

// Write writes the PROXY protocol header of client's connection
// to backend, before any of the client's bytes: the client's address (src:
// its own, or the one a trusted balancer's header named) and what it
// connected to (its local address: the VIP:port, or a mark
// service's original destination under TPROXY).
func Write(backend net.Conn, v config.ProxyProtocol, src netip.AddrPort, client *net.TCPConn) error {
	b, err := Header(v, src, client.LocalAddr().(*net.TCPAddr).AddrPort())
	if err == nil {
		_, err = backend.Write(b)
	}
	return err
}

// Header is the PROXY protocol header (version v) of a connection from src
// to dst.
func Header(v config.ProxyProtocol, src, dst netip.AddrPort) ([]byte, error) {
	version := byte(2)
	if v == config.ProxyV1 {
		version = 1
	}
	return proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(dst)).Format()
}

// maxProxyHeader bounds a PROXY header tether reads: a v1 line is at most
// 107 bytes, a v2 header 16 and its addresses and TLVs.
const maxProxyHeader = 1024

// v2Signature starts a PROXY v2 header.
var v2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// headerLen says how long the header at the start of b is: n > 0 when
// b holds it whole, 0 when more bytes are needed, an error when b does not
// start with one.
func headerLen(b []byte) (int, error) {
	switch {
	case bytes.HasPrefix(b, []byte("PROXY ")):
		if i := bytes.Index(b, []byte("\r\n")); i >= 0 {
			return i + 2, nil
		}
		if len(b) >= 108 {
			return 0, errors.New("a PROXY v1 line longer than 107 bytes")
		}
		return 0, nil
	case bytes.HasPrefix(b, v2Signature):
		if len(b) < 16 {
			return 0, nil
		}
		n := 16 + int(binary.BigEndian.Uint16(b[14:16]))
		if n > maxProxyHeader {
			return 0, fmt.Errorf("a PROXY v2 header of %d bytes", n)
		}
		if len(b) < n {
			return 0, nil
		}
		return n, nil
	case bytes.HasPrefix([]byte("PROXY "), b) || bytes.HasPrefix(v2Signature, b):
		return 0, nil // too short to tell yet
	}
	return 0, errors.New("no PROXY header")
}

// Read reads the PROXY header a trusted balancer put in front
// of c's bytes and returns the client it names. It peeks until the whole
// header is there and then consumes exactly its bytes, so that what the
// client sent after it stays in the socket for the relay. The caller sets
// c's read deadline.
func Read(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	buf := make([]byte, maxProxyHeader)
	var n, hlen int
	var herr error
	err = rc.Read(func(fd uintptr) bool {
		var rerr error
		n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_PEEK)
		switch {
		case rerr == unix.EAGAIN:
			return false
		case rerr != nil:
			herr = rerr
			return true
		case n == 0:
			herr = io.ErrUnexpectedEOF
			return true
		}
		hlen, herr = headerLen(buf[:n])
		return hlen > 0 || herr != nil // else: wait for the rest of the header
	})
	if err == nil {
		err = herr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("PROXY header: %w", err)
	}
	h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(buf[:hlen])))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("PROXY header: %w", err)
	}
	if _, err := io.ReadFull(c, buf[:hlen]); err != nil { // consume it
		return netip.AddrPort{}, err
	}
	src, ok := h.SourceAddr.(*net.TCPAddr)
	if !ok { // LOCAL (a health check of the balancer's) or UNKNOWN
		return netip.AddrPort{}, errors.New("PROXY header: no TCP source address")
	}
	ap := src.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
