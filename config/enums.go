package config

import "strings"

// The config's closed sets of words are typed, so that a mode is never
// compared with a protocol and every valid value is listed in one place.

// Mode is a data path.
type Mode string

// The data paths.
const (
	ModeProxy    Mode = "proxy"    // the socket proxy (transparent for mark services)
	ModeDirector Mode = "director" // NFQUEUE: tether picks, the kernel forwards
)

// Modes are the valid modes.
var Modes = []Mode{ModeProxy, ModeDirector}

// Protocol is a service's transport protocol.
type Protocol string

// The protocols.
const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// CheckType is a health check's kind.
type CheckType string

// The health check types.
const (
	CheckTCP  CheckType = "tcp"
	CheckHTTP CheckType = "http"
	// CheckHTTPS is http over TLS (keepalived's SSL_GET).
	CheckHTTPS CheckType = "https"
	// CheckSMTP wants a 2xx banner and a 250 to HELO (SMTP_CHECK).
	CheckSMTP CheckType = "smtp"
	// CheckDNS wants a NOERROR answer to a query over UDP (DNS_CHECK).
	CheckDNS  CheckType = "dns"
	CheckUDP  CheckType = "udp"
	CheckExec CheckType = "exec"
)

// CheckTypes are the health check types.
var CheckTypes = []CheckType{CheckTCP, CheckHTTP, CheckHTTPS, CheckSMTP, CheckDNS, CheckUDP, CheckExec}

// CheckStart is a server's health before its first verdict.
type CheckStart string

// The start states.
const (
	StartUp   CheckStart = "up"
	StartDown CheckStart = "down" // keepalived's alpha
)

// ExpireNodest is what the director does with the open flows of a server
// that leaves.
type ExpireNodest string

// The choices, IPVS's expire_nodest_conn off and on.
const (
	ExpireKeep  ExpireNodest = "keep"
	ExpireReset ExpireNodest = "reset"
)

// ProxyProtocol is a version of HAProxy's PROXY protocol, which tells a
// real server the client's address.
type ProxyProtocol string

// The versions: v1 is a text line, v2 a binary header.
const (
	ProxyV1 ProxyProtocol = "v1"
	ProxyV2 ProxyProtocol = "v2"
)

// join joins typed words for an error message.
func join[T ~string](ws []T) string {
	s := make([]string, len(ws))
	for i, w := range ws {
		s[i] = string(w)
	}
	return strings.Join(s, ", ")
}

// TProxy values: how mark services' TCP flows reach tether.
const (
	TProxyAuto   = "auto"   // listen on the pairs of local classes, TPROXY the rest
	TProxyAlways = "always" // TPROXY every class
)
