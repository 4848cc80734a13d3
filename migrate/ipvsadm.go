package migrate

import (
	"bufio"
	"io"
	"iter"
	"strconv"
	"strings"

	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/sched"
)

// ipvsService is one -A line and the -a lines that follow it.
type ipvsService struct {
	line   int
	key    string // "tcp 198.18.0.10:80" or "fwmark 1"
	svc    config.Service
	method string // the forwarding method of its servers: nat, dr, tun
	v6     bool
}

// IPVSAdm reads the rules `ipvsadm -S -n` prints (ipvsadm-save -n) and
// turns them into a tether configuration. mangle, if not nil, is
// `iptables-save -t mangle` (or ip6tables-save) output: its MARK rules
// give the firewall-mark services their classes.
//
// Without -n, ipvsadm writes host and service names; they are resolved as
// the host resolves them (IPVSAdmWith takes a Resolver of its own), and
// each is noted with what it became.
func IPVSAdm(rules io.Reader, mangle io.Reader) (*Result, error) {
	return IPVSAdmWith(rules, mangle, SystemResolver())
}

// IPVSAdmWith is IPVSAdm with the given resolver for names.
func IPVSAdmWith(rules io.Reader, mangle io.Reader, res Resolver) (*Result, error) {
	r := &Result{Config: &config.File{}, res: res}
	var order []*ipvsService
	byKey := map[string]*ipvsService{}
	sc := bufio.NewScanner(rules)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch f[0] {
		case "-A", "--add-service", "-E", "--edit-service":
			s := r.ipvsService(n, f[1:])
			if s == nil {
				continue
			}
			if old := byKey[s.key]; old != nil {
				if f[0] == "-A" || f[0] == "--add-service" {
					r.note(n, "%s is added a second time (first on line %d); the later settings win", s.key, old.line)
				}
				old.svc.Scheduler, old.svc.Persistence, old.svc.OnePacket = s.svc.Scheduler, s.svc.Persistence, s.svc.OnePacket
				continue
			}
			byKey[s.key] = s
			order = append(order, s)
		case "-a", "--add-server", "-e", "--edit-server":
			r.ipvsServer(n, f[1:], byKey)
		case "-C", "--clear", "-Z", "--zero":
			// ipvsadm -S starts with none; a hand-written file may.
		default:
			r.unreadable(n, "%q is not an ipvsadm -S rule (-A, -E, -a, -e); left out", truncate(sc.Text()))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, s := range order {
		if len(s.svc.Servers) == 0 {
			r.note(s.line, "%s has no real servers (-a); tether needs at least one, so it is left out", s.key)
			continue
		}
		s.svc.Mode = r.modeFor(s.line, s.method, s.key)
		if s.svc.OnePacket {
			r.note(s.line, "%s: one-packet scheduling (-o) is the socket proxy's; the service runs in proxy mode", s.key)
			s.svc.Mode = config.ModeProxy
		}
		if s.svc.Persistence != nil && s.v6 && s.svc.Persistence.Netmask != "" {
			s.svc.Persistence.Netmask6, s.svc.Persistence.Netmask = s.svc.Persistence.Netmask, ""
		}
		r.Config.Services = append(r.Config.Services, s.svc)
		r.lines = append(r.lines, s.line)
	}
	if err := r.markClasses(mangle); err != nil {
		return nil, err
	}
	r.sortNotes()
	return r, nil
}

func truncate(s string) string {
	if len(s) > 60 {
		return s[:60] + "…"
	}
	return s
}

// opts walks a rule's options; value takes an option's argument.
type opts struct {
	r    *Result
	line int
	f    []string
	i    int
	bad  bool
}

// all yields the options in turn, until the end or a bad value.
func (o *opts) all() iter.Seq[string] {
	return func(yield func(string) bool) {
		for !o.bad && o.i < len(o.f) {
			o.i++
			if !yield(o.f[o.i-1]) {
				return
			}
		}
	}
}

func (o *opts) value(name string) string {
	if o.i >= len(o.f) {
		o.r.unreadable(o.line, "%s needs a value; rule left out", name)
		o.bad = true
		return ""
	}
	o.i++
	return o.f[o.i-1]
}

// optional takes an option's argument if the next word is not an option.
func (o *opts) optional() (string, bool) {
	if o.i < len(o.f) && !strings.HasPrefix(o.f[o.i], "-") {
		o.i++
		return o.f[o.i-1], true
	}
	return "", false
}

// serviceKey reads -t/-u/-f's argument.
func (o *opts) serviceKey(opt string) (key, proto, listen string, mark uint32, v6 bool) {
	v := o.value(opt)
	if o.bad {
		return
	}
	switch opt {
	case "-f", "--fwmark-service":
		m, err := strconv.ParseUint(v, 0, 32)
		if err != nil || m == 0 {
			o.r.unreadable(o.line, "fwmark %q is not a mark 1..4294967295; rule left out", v)
			o.bad = true
			return
		}
		return "fwmark " + strconv.FormatUint(m, 10), "", "", uint32(m), false
	}
	proto = "tcp"
	if opt == "-u" || opt == "--udp-service" {
		proto = "udp"
	}
	ap, said, err := o.r.addrPort(v, proto, false)
	if err != nil {
		o.r.unreadable(o.line, "service %s; rule left out", err)
		o.bad = true
		return
	}
	if said != "" {
		o.r.note(o.line, "%s: %s", v, said)
	}
	return proto + " " + ap.String(), proto, ap.String(), 0, ap.Addr().Is6()
}

func (r *Result) ipvsService(n int, f []string) *ipvsService {
	o := &opts{r: r, line: n, f: f}
	s := &ipvsService{line: n}
	for opt := range o.all() {
		switch opt {
		case "-t", "--tcp-service", "-u", "--udp-service", "-f", "--fwmark-service":
			var proto string
			s.key, proto, s.svc.Listen, s.svc.Fwmark, s.v6 = o.serviceKey(opt)
			if proto == "udp" {
				s.svc.Protocol = "udp"
			}
		case "-s", "--scheduler":
			s.svc.Scheduler = sched.Name(o.value(opt))
		case "-p", "--persistent":
			if s.svc.Persistence == nil {
				s.svc.Persistence = &config.Persistence{}
			}
			if v, ok := o.optional(); ok {
				t, err := strconv.Atoi(v)
				if err != nil || t <= 0 {
					r.unreadable(n, "persistent timeout %q is not a number of seconds; rule left out", v)
					return nil
				}
				s.svc.Persistence.Timeout = config.Duration(t) * config.Duration(1e9)
			}
		case "-M", "--netmask":
			v := o.value(opt)
			if s.svc.Persistence == nil {
				s.svc.Persistence = &config.Persistence{}
			}
			s.svc.Persistence.Netmask = v
		case "-o", "--ops":
			s.svc.OnePacket = true
		case "-6", "--ipv6":
			s.v6 = true
		case "-b", "--sched-flags":
			r.note(n, "scheduler flags %q left out: tether's sh and mh always fall back to the next available server (the -fallback flags), and hashing the source port too (-port) is not supported", o.value(opt))
		case "--pe":
			r.note(n, "persistence engine %q is not supported and was left out", o.value(opt))
		default:
			r.note(n, "option %q is not understood and was left out", opt)
		}
	}
	if o.bad {
		return nil
	}
	if s.key == "" {
		r.unreadable(n, "a service rule without -t, -u or -f; left out")
		return nil
	}
	if s.svc.Scheduler != "" {
		s.svc.Scheduler = r.ipvsScheduler(n, string(s.svc.Scheduler), s.key)
	}
	s.svc.Name = serviceName(s.svc.Protocol, s.svc.Listen, s.svc.Fwmark)
	if s.svc.OnePacket && s.svc.Protocol != "udp" {
		r.note(n, "%s: -o (one-packet scheduling) is for UDP services; left out", s.key)
		s.svc.OnePacket = false
	}
	return s
}

func (r *Result) ipvsServer(n int, f []string, services map[string]*ipvsService) {
	o := &opts{r: r, line: n, f: f}
	var key, server, method string
	weight, upper, lower := 1, 0, 0
	for opt := range o.all() {
		switch opt {
		case "-t", "--tcp-service", "-u", "--udp-service", "-f", "--fwmark-service":
			key, _, _, _, _ = o.serviceKey(opt)
		case "-r", "--real-server":
			server = o.value(opt)
		case "-g", "--gatewaying":
			method = "dr"
		case "-i", "--ipip":
			method = "tun"
		case "-m", "--masquerading":
			method = "nat"
		case "-w", "--weight":
			v := o.value(opt)
			w, err := strconv.Atoi(v)
			if err != nil || w < 0 || w > 65535 {
				r.unreadable(n, "weight %q is not 0..65535; rule left out", v)
				return
			}
			weight = w
		case "-x", "--u-threshold", "-y", "--l-threshold":
			v := o.value(opt)
			t, err := strconv.Atoi(v)
			if err != nil || t < 0 {
				r.unreadable(n, "connection threshold %s %q is not a count; rule left out", opt, v)
				return
			}
			if opt == "-x" || opt == "--u-threshold" {
				upper = t
			} else {
				lower = t
			}
		case "--tun-type", "--tun-port", "--tun-nocsum", "--tun-csum", "--tun-remcsum":
			r.note(n, "tunnel option %s is not supported; left out", opt)
			if opt == "--tun-type" || opt == "--tun-port" {
				o.value(opt)
			}
		default:
			r.note(n, "option %q is not understood and was left out", opt)
		}
	}
	if o.bad {
		return
	}
	s := services[key]
	switch {
	case key == "":
		r.unreadable(n, "a server rule without -t, -u or -f; left out")
		return
	case s == nil:
		r.unreadable(n, "server of %s, which no -A rule before it adds; left out", key)
		return
	case server == "":
		r.unreadable(n, "a server rule without -r; left out")
		return
	}
	network := string(s.svc.Protocol)
	if network == "" {
		network = "tcp"
	}
	keepsPort := s.svc.Fwmark != 0 || portZero(s.svc.Listen) // its servers may say port 0: the client's
	ap, said, err := r.addrPort(server, network, keepsPort)
	if err != nil || ap.Port() == 0 && !keepsPort {
		r.unreadable(n, "real server %q: not an address:port (%v); left out", server, err)
		return
	}
	if said != "" {
		r.note(n, "%s: %s", server, said)
	}
	addr := ap.String()
	if ap.Port() == 0 {
		addr = ap.Addr().String() // a mark service's server keeps the client's port
	}
	if s.method == "" || method == "dr" || method == "tun" {
		s.method = method
	}
	if lower > 0 && (upper == 0 || lower > upper) {
		r.note(n, "%s: -y %d without a larger -x does nothing in IPVS; left out", addr, lower)
		lower = 0
	}
	w := weight
	s.svc.Servers = append(s.svc.Servers, config.Server{Address: addr, Weight: &w, MaxConnections: upper, ResumeConnections: lower})
}
