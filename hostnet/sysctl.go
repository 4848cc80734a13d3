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

// CheckTProxy says, on log, what the host's sysctls mean for TPROXY, and
// with set, sets what tether may (tether run --set-sysctls): it warns when
// br_netfilter runs the IP hooks for bridged frames (TPROXY then fails for
// clients that come through a bridge), and sets or explains
// tcp_fwmark_accept (without it mark services are found by original
// destination, as the rules classify). It runs on the calling thread's
// network namespace.
func CheckTProxy(log *slog.Logger, set bool) error {
	if BridgeCallsIPTables() {
		log.Warn("net.bridge.bridge-nf-call-iptables=1: TPROXY fails for clients that reach the VIP through a bridge of this host; set it to 0 in this network namespace if the ingress is a bridge")
	}
	if FwmarkAccept() {
		return nil
	}
	if set {
		if err := SetFwmarkAccept(); err != nil {
			return fmt.Errorf("--set-sysctls: %w", err)
		}
		log.Info("set net.ipv4.tcp_fwmark_accept=1 (--set-sysctls): services are found by socket mark")
		return nil
	}
	log.Info("net.ipv4.tcp_fwmark_accept=0: mark services are found by original destination, as the rules classify; " +
		"set it to 1 (sysctl -w net.ipv4.tcp_fwmark_accept=1, or tether run --set-sysctls) to use the socket mark")
	return nil
}
