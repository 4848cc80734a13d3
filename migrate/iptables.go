package migrate

import (
	"bufio"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/tetherlb/tether/config"
)

// The iptables-save reader both importers use: ipvsadm and keepalived
// describe a firewall-mark service by its mark alone, and the MARK rules of
// the mangle table say which flows carry it.

// markClasses gives every firewall-mark service its class, from the MARK
// rules of mangle; a mark without rules gets an empty class and a note.
func (r *Result) markClasses(mangle io.Reader) error {
	classes := map[uint32]*config.MarkClass{}
	if mangle != nil {
		var err error
		if classes, err = r.markRules(mangle); err != nil {
			return err
		}
	}
	for i, s := range r.Config.Services {
		m := s.Fwmark
		if m == 0 {
			continue
		}
		c := classes[m]
		if c == nil {
			r.note(r.lines[i], "%s: the rules that set mark %d are not in this file; give them (--iptables, iptables-save -t mangle output) or fill in the addresses and ports of marks class %q by hand", s.Name, m, "fwmark-"+strconv.Itoa(int(m)))
			c = &config.MarkClass{Name: "fwmark-" + strconv.Itoa(int(m)), Mark: m}
		}
		r.Config.Marks = append(r.Config.Marks, *c)
	}
	return nil
}

// markRules reads the MARK rules of iptables-save output into mark
// classes: destination, protocol and ports per mark.
func (r *Result) markRules(rd io.Reader) (map[uint32]*config.MarkClass, error) {
	classes := map[uint32]*config.MarkClass{}
	protos := map[uint32]map[string]bool{}
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "-A" || !strings.Contains(sc.Text(), "-j MARK") {
			continue
		}
		var dst, proto string
		var ports []string
		var mark uint64
		var err error
		for i := 2; i < len(f); i++ {
			arg := func() string {
				if i+1 < len(f) {
					i++
					return f[i]
				}
				return ""
			}
			switch f[i] {
			case "-d", "--destination":
				dst = arg()
			case "-p", "--protocol":
				proto = arg()
			case "--dport", "--destination-port", "--dports", "--destination-ports":
				for _, p := range strings.Split(arg(), ",") {
					ports = append(ports, strings.Replace(p, ":", "-", 1))
				}
			case "--set-mark", "--set-xmark":
				v, _, _ := strings.Cut(arg(), "/")
				mark, err = strconv.ParseUint(v, 0, 32)
			}
		}
		switch {
		case err != nil || mark == 0:
			r.note(n, "iptables: a MARK rule whose mark tether cannot read; left out")
			continue
		case dst == "" || len(ports) == 0:
			r.note(n, "iptables: the MARK rule for mark %d has no destination address or port; tether's classes need both, so it is left out", mark)
			continue
		case proto != "tcp" && proto != "udp":
			r.note(n, "iptables: the MARK rule for mark %d is for protocol %q; tether marks tcp and udp only; left out", mark, proto)
			continue
		}
		m := uint32(mark)
		c := classes[m]
		if c == nil {
			c = &config.MarkClass{Name: "fwmark-" + strconv.FormatUint(mark, 10), Mark: m}
			classes[m], protos[m] = c, map[string]bool{}
		}
		if p, err := netip.ParsePrefix(dst); err == nil && p.IsSingleIP() {
			dst = p.Addr().String()
		}
		c.Addresses = appendNew(c.Addresses, dst)
		for _, p := range ports {
			c.Ports = appendNew(c.Ports, p)
		}
		protos[m][proto] = true
	}
	for _, m := range slices.Sorted(maps.Keys(classes)) {
		c := classes[m]
		if len(protos[m]) == 2 {
			c.Protocol = "both"
			r.note(0, "mark %d covers tcp and udp rules; tether's class applies every port to both protocols", m)
		} else if protos[m]["udp"] {
			c.Protocol = "udp"
		}
	}
	return classes, sc.Err()
}

func appendNew(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}
