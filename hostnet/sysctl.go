package hostnet

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// The sysctls tether reads, by their /proc/sys path; they follow the
// calling thread's network namespace.
const (
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

// CheckTProxy says, on log, what the host's sysctls mean for TPROXY: it
// warns when br_netfilter runs the IP hooks for bridged frames (TPROXY
// then fails for clients that come through a bridge). It runs on the
// calling thread's network namespace.
func CheckTProxy(log *slog.Logger) {
	if BridgeCallsIPTables() {
		log.Warn("net.bridge.bridge-nf-call-iptables=1: TPROXY fails for clients that reach the VIP through a bridge of this host; set it to 0 in this network namespace if the ingress is a bridge")
	}
}
