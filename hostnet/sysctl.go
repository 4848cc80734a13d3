package hostnet

import (
	"fmt"
	"os"
	"strings"
)

// The sysctls tether reads, by their /proc/sys path; they follow the
// calling thread's network namespace.
const (
	fwmarkAccept     = "/proc/sys/net/ipv4/tcp_fwmark_accept"
	bridgeCallsIP    = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	ipLocalPortRange = "/proc/sys/net/ipv4/ip_local_port_range"
)

// BridgeCallsIPTables reports whether br_netfilter runs the IP hooks for
// bridged frames. TPROXY then assigns the socket at bridge level and the
// IP layer drops it, so clients that reach the VIP through a bridge of
// this host are refused.
func BridgeCallsIPTables() bool {
	b, _ := os.ReadFile(bridgeCallsIP)
	return strings.TrimSpace(string(b)) == "1"
}

// LocalPortRange is the ephemeral port range, where outgoing connections
// take their ports.
func LocalPortRange() (lo, hi int, ok bool) {
	b, err := os.ReadFile(ipLocalPortRange)
	if err != nil {
		return 0, 0, false
	}
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil {
		return 0, 0, false
	}
	return lo, hi, true
}

// FwmarkAccept reports net.ipv4.tcp_fwmark_accept: with it, an accepted
// socket carries its SYN's mark, so SO_MARK names a mark service. Where
// the sysctl cannot be read it reports true, as there is nothing to fix.
func FwmarkAccept() bool {
	b, err := os.ReadFile(fwmarkAccept)
	return err != nil || strings.TrimSpace(string(b)) == "1"
}

// SetFwmarkAccept sets net.ipv4.tcp_fwmark_accept=1.
func SetFwmarkAccept() error {
	if err := os.WriteFile(fwmarkAccept, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("net.ipv4.tcp_fwmark_accept=1: %w", err)
	}
	return nil
}
