package proxy

import (
	"net"

	"github.com/pires/go-proxyproto"
	"github.com/tetherlb/tether/config"
)

// sendProxyHeader writes the PROXY protocol header of client's connection
// to backend, before any of the client's bytes: the client's address and
// what it connected to (its local address: the VIP:port, or a mark
// service's original destination under TPROXY).
func sendProxyHeader(backend net.Conn, v config.ProxyProtocol, client *net.TCPConn) error {
	version := byte(2)
	if v == config.ProxyV1 {
		version = 1
	}
	h := proxyproto.HeaderProxyFromAddrs(version, client.RemoteAddr(), client.LocalAddr())
	_, err := h.WriteTo(backend)
	return err
}
