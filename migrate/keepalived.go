package migrate

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/tetherlb/tether/config"
)

// block is one keepalived.conf statement: its words and, for a block,
// the statements inside its braces.
type block struct {
	line  int
	words []string
	kids  []*block
}

func (b *block) name() string { return strings.ToLower(b.words[0]) }

func (b *block) arg(i int) string {
	if i < len(b.words) {
		return b.words[i]
	}
	return ""
}

// parseKeepalived splits keepalived.conf into statements: words, quoted
// strings, { } nesting, # and ! comments. An unbalanced brace is an error
// with its line.
func parseKeepalived(rd io.Reader) ([]*block, error) {
	root := &block{}
	stack := []*block{root}
	var cur *block // the statement being read, until its line ends
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		cur = nil
		for _, w := range words(sc.Text()) {
			switch w {
			case "{":
				if cur == nil {
					// A brace on a line of its own opens the last statement.
					top := stack[len(stack)-1]
					if len(top.kids) == 0 {
						return nil, fmt.Errorf("line %d: { without a statement before it", n)
					}
					cur = top.kids[len(top.kids)-1]
				}
				stack = append(stack, cur)
				cur = nil
			case "}":
				if len(stack) == 1 {
					return nil, fmt.Errorf("line %d: } without a { before it", n)
				}
				stack = stack[:len(stack)-1]
				cur = nil
			default:
				if cur == nil {
					cur = &block{line: n}
					top := stack[len(stack)-1]
					top.kids = append(top.kids, cur)
				}
				cur.words = append(cur.words, w)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(stack) > 1 {
		return nil, fmt.Errorf("line %d: the block opened here is never closed", stack[len(stack)-1].line)
	}
	return root.kids, nil
}

// words splits a line, keeping quoted strings whole and dropping comments.
func words(line string) []string {
	var out []string
	for i := 0; i < len(line); {
		c := line[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			i++
		case c == '#' || c == '!':
			return out
		case c == '{' || c == '}':
			out = append(out, string(c))
			i++
		case c == '"':
			j := strings.IndexByte(line[i+1:], '"')
			if j < 0 {
				out = append(out, line[i+1:])
				return out
			}
			out = append(out, line[i+1:i+1+j])
			i += j + 2
		default:
			j := i
			for j < len(line) && !strings.ContainsRune(" \t\r{}\"", rune(line[j])) {
				j++
			}
			out = append(out, line[i:j])
			i = j
		}
	}
	return out
}

// Keepalived reads the virtual_server blocks of keepalived.conf and turns
// them into a tether configuration; other blocks are skipped with a note.
// mangle, if not nil, is iptables-save output, as for IPVSAdm.
func Keepalived(rd io.Reader, mangle io.Reader) (*Result, error) {
	blocks, err := parseKeepalived(rd)
	if err != nil {
		return nil, fmt.Errorf("keepalived.conf: %w", err)
	}
	return (&Result{}).keepalived(blocks, mangle)
}

// keepalived converts parsed blocks; include statements still among them
// (read from a stream, not a file) are noted and skipped.
func (r *Result) keepalived(blocks []*block, mangle io.Reader) (*Result, error) {
	r.Config = &config.File{}
	groups := r.groups(blocks)
	for _, b := range blocks {
		switch b.name() {
		case "virtual_server_group": // read above
		case "virtual_server":
			if strings.EqualFold(b.arg(1), "group") {
				r.groupServices(b, groups)
			} else if s, ok := r.virtualServer(b); ok {
				r.Config.Services = append(r.Config.Services, s)
				r.lines = append(r.lines, b.line)
			}
		case "include", "includer", "includem", "includew", "includeb":
			r.note(b.line, "%s %s skipped: includes are followed when importing from a file, not from stdin", b.name(), b.arg(1))
		case "global_defs", "vrrp_instance", "vrrp_sync_group", "vrrp_script", "static_ipaddress", "static_routes":
			r.note(b.line, "%s skipped: tether imports virtual_server blocks only", b.name())
		default:
			r.note(b.line, "%q skipped: not a block tether knows", b.words[0])
		}
	}
	if err := r.markClasses(mangle); err != nil {
		return nil, err
	}
	r.sortNotes()
	return r, nil
}

// virtualServer converts one virtual_server block.
func (r *Result) virtualServer(b *block) (config.Service, bool) {
	var s config.Service
	var key string
	if strings.EqualFold(b.arg(1), "fwmark") {
		m, err := strconv.ParseUint(b.arg(2), 0, 32)
		if err != nil || m == 0 {
			r.unreadable(b.line, "virtual_server fwmark %q: not a mark; block left out", b.arg(2))
			return s, false
		}
		s.Fwmark, key = uint32(m), "fwmark "+b.arg(2)
	} else {
		ap, ok := hostPort(b.arg(1), b.arg(2))
		if !ok {
			r.unreadable(b.line, "virtual_server %s %s: not an address and port; block left out", b.arg(1), b.arg(2))
			return s, false
		}
		s.Listen, key = ap.String(), "virtual_server "+ap.String()
	}
	method, delay, alpha, vsInhibit := "nat", time.Duration(0), false, false
	methodLine, opsLine := b.line, b.line // where lb_kind and ops are, for their notes
	var inhibit []bool
	for _, k := range b.kids {
		switch k.name() {
		case "lb_algo", "lvs_sched":
			s.Scheduler = r.ipvsScheduler(k.line, strings.ToLower(k.arg(1)), key)
		case "lb_kind", "lvs_method":
			method, methodLine = strings.ToLower(k.arg(1)), k.line
			if method != "nat" && method != "dr" && method != "tun" {
				r.note(k.line, "%s: %s %q is not NAT, DR or TUN; taken as NAT", key, k.name(), k.arg(1))
				method = "nat"
			}
		case "protocol":
			switch p := strings.ToLower(k.arg(1)); p {
			case "tcp":
			case "udp":
				if s.Fwmark == 0 {
					s.Protocol = "udp"
				}
			default:
				r.note(k.line, "%s: protocol %q is not supported; taken as TCP", key, k.arg(1))
			}
		case "persistence_timeout":
			t, err := strconv.Atoi(k.arg(1))
			if err != nil || t <= 0 {
				r.note(k.line, "%s: persistence_timeout %q is not seconds; the default 300 is used", key, k.arg(1))
				t = 0
			}
			s.Persistence = orNew(s.Persistence)
			s.Persistence.Timeout = config.Duration(time.Duration(t) * time.Second)
		case "persistence_granularity":
			s.Persistence = orNew(s.Persistence)
			if strings.Contains(k.arg(1), ".") {
				s.Persistence.Netmask = k.arg(1)
			} else {
				s.Persistence.Netmask6 = k.arg(1)
			}
		case "delay_loop":
			if d, err := strconv.ParseFloat(k.arg(1), 64); err == nil && d > 0 {
				delay = time.Duration(d * float64(time.Second))
			}
		case "sorry_server":
			ap, ok := hostPort(k.arg(1), k.arg(2))
			if !ok {
				r.note(k.line, "%s: sorry_server %s %s is not an address and port; left out", key, k.arg(1), k.arg(2))
				continue
			}
			s.SorryServer = ap.String()
		case "quorum":
			if q, err := strconv.Atoi(k.arg(1)); err == nil && q > 0 {
				s.Quorum = q
			}
		case "real_server":
			sv, inh, ok := r.realServer(k, key, s.Fwmark != 0 || portZero(s.Listen))
			if ok {
				s.Servers = append(s.Servers, sv)
				inhibit = append(inhibit, inh)
			}
		case "alpha": // applied to the checks below
			alpha = true
		case "ops":
			s.OnePacket, opsLine = true, k.line
		case "quorum_up", "quorum_down":
			// keepalived runs the line's command; tether its fields.
			argv := strings.Fields(k.arg(1))
			if len(argv) == 0 {
				r.note(k.line, "%s: %s without a command; left out", key, k.name())
			} else if k.name() == "quorum_up" {
				s.QuorumUp = argv
			} else {
				s.QuorumDown = argv
			}
		case "inhibit_on_failure": // the default of every real server
			vsInhibit = true
		case "ip_family":
			r.note(k.line, "%s: ip_family: tether takes the family from the addresses; left out", key)
		case "hashed", "flag-1", "flag-2", "flag-3", "sh-port", "sh-fallback", "mh-port", "mh-fallback":
			r.note(k.line, "%s: scheduler flag %s is not supported (tether's sh and mh hash the client address only); left out", key, k.name())
		case "connect_timeout", "retry", "delay_before_retry", "warmup":
			r.note(k.line, "%s: a virtual_server-level %s is not applied to the checks; set it in each check", key, k.name())
		case "omega", "ha_suspend", "virtualhost", "hysteresis", "persistence_engine", "smtp_alert", "sorry_server_inhibit", "sorry_server_lvs_method":
			r.note(k.line, "%s: %s is not supported; left out", key, k.name())
		default:
			r.note(k.line, "%s: %s is not understood; left out", key, k.name())
		}
	}
	if vsInhibit {
		for i := range inhibit {
			inhibit[i] = true
		}
	}
	if len(s.QuorumUp)+len(s.QuorumDown) > 0 && s.Quorum == 0 {
		s.Quorum = 1 // keepalived's default: the hooks fire when the last server goes and the first comes back
		r.note(b.line, "%s: quorum_up/quorum_down without quorum: quorum 1, keepalived's default", key)
	}
	for i := range s.Servers {
		if hc := s.Servers[i].HealthCheck; hc != nil {
			if delay > 0 {
				hc.Interval = config.Duration(delay)
			}
			if alpha {
				hc.Start = "down"
			}
		}
	}
	for i, inh := range inhibit {
		if inh {
			s.InhibitOnFailure = true
		}
		if inh != inhibit[0] {
			r.note(b.line, "%s: inhibit_on_failure is set on some real servers only; tether sets it per service, so it applies to all (server %d differs)", key, i)
		}
	}
	if s.OnePacket && s.Protocol != "udp" {
		s.OnePacket = false
		r.note(opsLine, "%s: ops is for UDP services; left out", key)
	}
	if len(s.Servers) == 0 {
		r.note(b.line, "%s has no real servers; tether needs at least one, so it is left out", key)
		return s, false
	}
	if s.Quorum > 0 {
		total := 0
		for _, sv := range s.Servers {
			total += *sv.Weight
		}
		if s.Quorum > total {
			r.note(b.line, "%s: quorum %d is above the servers' total weight %d; lowered to it", key, s.Quorum, total)
			s.Quorum = total
		}
	}
	s.Name = serviceName(s.Protocol, s.Listen, s.Fwmark)
	s.Mode = r.modeFor(methodLine, method, key)
	if s.OnePacket {
		r.note(opsLine, "%s: one-packet scheduling (ops) is the socket proxy's; the service runs in proxy mode", key)
		s.Mode = config.ModeProxy
	}
	return s, true
}

func orNew(p *config.Persistence) *config.Persistence {
	if p == nil {
		return &config.Persistence{}
	}
	return p
}

// hostPort reads keepalived's "IP PORT" pair.
func hostPort(host, port string) (netip.AddrPort, bool) {
	a, err := netip.ParseAddr(host)
	p, perr := strconv.ParseUint(port, 10, 16)
	if err != nil || perr != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), true
}

// realServer converts a real_server block and its check.
func (r *Result) realServer(b *block, key string, mark bool) (config.Server, bool, bool) {
	var sv config.Server
	var addr string
	if ap, ok := hostPort(b.arg(1), b.arg(2)); ok && ap.Port() != 0 {
		addr = ap.String()
	} else if a, err := netip.ParseAddr(b.arg(1)); err != nil || !mark {
		r.unreadable(b.line, "%s: real_server %s %s is not an address and port; left out", key, b.arg(1), b.arg(2))
		return sv, false, false
	} else {
		addr = a.Unmap().String()
	}
	sv.Address = addr
	w := 1
	sv.Weight = &w
	inhibit := false
	for _, k := range b.kids {
		switch n := k.name(); n {
		case "weight":
			if v, err := strconv.Atoi(k.arg(1)); err == nil && v >= 0 && v <= 65535 {
				w = v
			} else {
				r.note(k.line, "%s: weight %q is not 0..65535; 1 is used", key, k.arg(1))
			}
		case "inhibit_on_failure":
			inhibit = true
		case "uthreshold", "lthreshold":
			v, err := strconv.Atoi(k.arg(1))
			if err != nil || v < 0 {
				r.note(k.line, "%s: %s %q is not a count; left out", key, n, k.arg(1))
			} else if n == "uthreshold" {
				sv.MaxConnections = v
			} else {
				sv.ResumeConnections = v
			}
		case "tcp_check", "http_get", "ssl_get", "smtp_check", "dns_check", "misc_check", "udp_check":
			if sv.HealthCheck != nil {
				r.note(k.line, "%s: real_server %s has a second check; tether keeps the first", key, addr)
				continue
			}
			sv.HealthCheck = r.check(k, key)
		case "bfd_check", "file_check", "ping_check":
			r.note(k.line, "%s: %s is not supported; real_server %s is imported without it", key, strings.ToUpper(n), addr)
		case "notify_up", "notify_down", "smtp_alert", "lvs_method", "lb_kind", "virtualhost":
			r.note(k.line, "%s: real_server %s: %s is not supported; left out", key, addr, n)
		case "connect_timeout", "retry", "delay_before_retry", "warmup", "delay_loop":
			r.note(k.line, "%s: real_server %s: a server-level %s is not applied to its check; set it in the check", key, addr, n)
		default:
			r.note(k.line, "%s: real_server %s: %s is not understood; left out", key, addr, n)
		}
	}
	if sv.ResumeConnections > 0 && sv.ResumeConnections > sv.MaxConnections {
		r.note(b.line, "%s: real_server %s: lthreshold without a larger uthreshold does nothing in IPVS; left out", key, addr)
		sv.ResumeConnections = 0
	}
	if hc := sv.HealthCheck; hc != nil && hc.Type != "exec" && hc.Port == 0 && mark && !strings.Contains(addr, ":") {
		r.note(b.line, "%s: real_server %s has no port, so its %s check needs connect_port; check left out", key, addr, hc.Type)
		sv.HealthCheck = nil
	}
	return sv, inhibit, true
}

// check converts TCP_CHECK, HTTP_GET, SSL_GET, SMTP_CHECK, DNS_CHECK,
// UDP_CHECK and MISC_CHECK. keepalived
// brings a server up after one success and down after retry+1 failures.
func (r *Result) check(b *block, key string) *config.HealthCheck {
	hc := &config.HealthCheck{Rise: 1, Fall: 1}
	switch b.name() {
	case "tcp_check":
		hc.Type = "tcp"
	case "http_get":
		hc.Type = "http"
	case "ssl_get":
		hc.Type = "https"
	case "smtp_check":
		hc.Type = "smtp"
	case "dns_check":
		hc.Type = "dns"
	case "udp_check":
		hc.Type = "udp"
	case "misc_check":
		hc.Type = "exec"
	}
	urls, sni := 0, false
	for _, k := range b.kids {
		switch k.name() {
		case "connect_timeout", "misc_timeout":
			if t, err := strconv.ParseFloat(k.arg(1), 64); err == nil && t > 0 {
				hc.Timeout = config.Duration(time.Duration(t * float64(time.Second)))
			}
		case "connect_port":
			if p, err := strconv.ParseUint(k.arg(1), 10, 16); err == nil && p > 0 && hc.Type != "exec" {
				hc.Port = uint16(p)
			}
		case "retry", "nb_get_retry":
			if n, err := strconv.Atoi(k.arg(1)); err == nil && n >= 0 {
				hc.Fall = n + 1
			}
		case "delay_before_retry", "connect_ip", "bindto", "bind_port", "warmup", "misc_dynamic", "user", "require_reply":
			if k.name() == "require_reply" && hc.Type == "udp" {
				hc.Expect = k.arg(1)
			}
		case "virtualhost":
			hc.Host = k.arg(1)
		case "helo_name":
			hc.Helo = k.arg(1)
		case "type":
			hc.QueryType = k.arg(1)
		case "name":
			hc.QueryName = k.arg(1)
		case "enable_sni":
			sni = true
		case "misc_path":
			hc.Command = strings.Fields(k.arg(1))
		case "payload":
			hc.Send = k.arg(1)
		case "url":
			if urls++; urls > 1 {
				r.note(k.line, "%s: HTTP_GET with several urls; tether checks the first", key)
				continue
			}
			for _, u := range k.kids {
				switch u.name() {
				case "path":
					hc.Path = u.arg(1)
				case "status_code":
					hc.ExpectStatus = u.arg(1)
					if _, _, err := config.ParseStatusRange(hc.ExpectStatus); err != nil {
						r.note(u.line, "%s: status_code %q is not a status or range; 200-399 is used", key, u.arg(1))
						hc.ExpectStatus = ""
					}
				case "digest":
					hc.Digest = u.arg(1)
				case "virtualhost":
					hc.Host = u.arg(1)
				default:
					r.note(u.line, "%s: url %s is not understood; left out", key, u.name())
				}
			}
		default:
			r.note(k.line, "%s: %s %s is not understood; left out", key, b.name(), k.name())
		}
	}
	if sni && hc.Type == "https" {
		hc.SNI = hc.Host
	}
	if hc.Type == "exec" && len(hc.Command) == 0 {
		r.note(b.line, "%s: MISC_CHECK without misc_path; check left out", key)
		return nil
	}
	return hc
}
