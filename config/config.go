package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/marks"
	"go.yaml.in/yaml/v3"
)

// File is the whole configuration file.
type File struct {
	// Log holds the log settings; the command-line flags override them.
	Log Log `yaml:"log,omitempty"`
	// Snapshot is where persistence templates are saved on stop and
	// restored from on start. Empty: no snapshot.
	Snapshot string `yaml:"snapshot,omitempty"`
	// Metrics, when Listen is set, serves Prometheus text at /metrics.
	Metrics Metrics `yaml:"metrics,omitempty"`
	// Admin is the admin API: tether ls, affinity, server set, reload.
	Admin Admin `yaml:"admin,omitempty"`
	// Affinity sizes the persistence table.
	Affinity Affinity `yaml:"affinity,omitempty"`
	// DrainTimeout is how long a stop waits for open connections (default 30s).
	DrainTimeout Duration `yaml:"drain_timeout,omitempty"`
	// MarkMask is the part of the packet mark tether owns (default all 32
	// bits); the rest stays with other users of the host.
	MarkMask uint32 `yaml:"mark_mask,omitempty"`
	// Marks are the firewall-mark classes: which flows get which mark.
	Marks []MarkClass `yaml:"marks,omitempty"`
	// TProxyPort is the port of the transparent listener that mark
	// services' TCP flows are TPROXYed to (default 20080 when there are
	// marks: below Linux's ephemeral range, 32768-60999, where an
	// outgoing connection could already hold it).
	TProxyPort uint16 `yaml:"tproxy_port,omitempty"`
	// TProxyIngress names the interfaces clients come in through, for the
	// policy routing a VIP that is not a local address needs (ip rule iif
	// IF fwmark M lookup TABLE). Empty: no policy routing (local VIPs).
	TProxyIngress []string `yaml:"tproxy_ingress,omitempty"`
	// TProxyRouteTable and TProxyRulePriority place that routing; default
	// 100 and 1000.
	TProxyRouteTable   int `yaml:"tproxy_route_table,omitempty"`
	TProxyRulePriority int `yaml:"tproxy_rule_priority,omitempty"`
	// UDPMaxFlows bounds the UDP flows of all services together (default
	// 262144); each service has its own limits.max_flows too.
	UDPMaxFlows int `yaml:"udp_max_flows,omitempty"`
	// Mode is the data path of services that name none: proxy (default)
	// or director.
	Mode string `yaml:"mode,omitempty"`
	// Director sets up the NFQUEUE director, for services in mode director.
	Director Director  `yaml:"director,omitempty"`
	Services []Service `yaml:"services"`
}

// Director settings: how new flows reach tether and what the kernel does
// with the rest.
type Director struct {
	// Queue is the first NFQUEUE number (default 0) and Queues how many
	// (default 1); the kernel spreads flows over them by hash, or by CPU
	// with CPUFanout. tether reads each on its own goroutine.
	Queue     uint16 `yaml:"queue,omitempty"`
	Queues    uint16 `yaml:"queues,omitempty"`
	CPUFanout bool   `yaml:"cpu_fanout,omitempty"`
	// QueueLength is the packets a queue holds before the kernel drops (or,
	// fail-open, accepts) new flows (default 4096).
	QueueLength uint32 `yaml:"queue_length,omitempty"`
	// FailOpen: when no tether reads the queue or it is full, new flows go
	// to a server the kernel picks by hashing the masked client address;
	// otherwise they are dropped (the client retries its SYN).
	FailOpen bool `yaml:"fail_open,omitempty"`
	// Masquerade rewrites the source of director flows to the balancer's
	// address, for servers that do not route back through it (one arm).
	Masquerade bool `yaml:"masquerade,omitempty"`
	// MarkBase is the first packet mark that names a server choice
	// (default 0x7e000000); one mark per server of each director service
	// follows it.
	MarkBase uint32 `yaml:"mark_base,omitempty"`
	// ExpireNodest is what happens to open flows of a server removed on
	// reload: keep (default: they run on) or reset (their conntrack
	// entries are deleted, as IPVS's expire_nodest_conn).
	ExpireNodest string `yaml:"expire_nodest,omitempty"`
}

// MarkClass is one firewall-mark class.
type MarkClass struct {
	Name      string   `yaml:"name"`
	Mark      uint32   `yaml:"mark"`
	Protocol  string   `yaml:"protocol,omitempty"` // tcp (default), udp or both
	Addresses []string `yaml:"addresses"`          // destination addresses or prefixes
	Ports     []string `yaml:"ports"`              // 80, 30000-30099, or all
}

// Log settings.
type Log struct {
	Level  string `yaml:"level,omitempty"`  // debug, info (default), warn, error
	Format string `yaml:"format,omitempty"` // text (default) or json
}

// Metrics settings. Metrics are collected when Enabled or Listen is set,
// and then served on the admin API's /metrics too.
type Metrics struct {
	Enabled bool   `yaml:"enabled,omitempty"`
	Listen  string `yaml:"listen,omitempty"` // host:port; empty: no metrics endpoint of its own
}

// Admin settings.
type Admin struct {
	// Socket is the admin API's unix socket (mode 0600); "off" turns it
	// off. Default: /run/tether/admin.sock for root, else
	// $XDG_RUNTIME_DIR/tether/admin.sock (or /tmp/tether-UID/admin.sock).
	Socket string `yaml:"socket,omitempty"`
	// Listen serves the API on a TCP address too, to holders of the
	// bearer token in TokenFile.
	Listen    string `yaml:"listen,omitempty"`
	TokenFile string `yaml:"token_file,omitempty"`
}

// Affinity settings.
type Affinity struct {
	Capacity int `yaml:"capacity,omitempty"` // templates; default 1048576
}

// Service is a virtual service.
type Service struct {
	Name     string `yaml:"name"`
	Protocol string `yaml:"protocol,omitempty"` // tcp (default) or udp
	Listen   string `yaml:"listen,omitempty"`   // VIP:port; or Fwmark
	// Fwmark makes this a firewall-mark service: the flows of the mark
	// class with this mark, on every address, port and protocol it covers.
	Fwmark      uint32       `yaml:"fwmark,omitempty"`
	Scheduler   string       `yaml:"scheduler,omitempty"`
	Persistence *Persistence `yaml:"persistence,omitempty"`
	// OnePacket schedules every datagram on its own and keeps no flow
	// (ipvsadm's -o, for DNS-like traffic); udp only.
	OnePacket bool `yaml:"one_packet,omitempty"`
	// Mode is the data path: proxy (socket proxy, default) or director
	// (NFQUEUE: tether picks the server of a new flow, the kernel
	// forwards it).
	Mode   string `yaml:"mode,omitempty"`
	Limits Limits `yaml:"limits,omitempty"`
	// HealthCheck probes every server that has none of its own.
	HealthCheck *HealthCheck `yaml:"health_check,omitempty"`
	// InhibitOnFailure: a server that fails its check gets weight 0
	// (quiescent: its templates and connections stay, it takes no new
	// clients) instead of going down (its templates are dropped and its
	// clients rescheduled). keepalived's inhibit_on_failure.
	InhibitOnFailure bool `yaml:"inhibit_on_failure,omitempty"`
	// SorryServer takes the service's new clients while no server is
	// available or the service is below quorum; it gets no templates.
	SorryServer string `yaml:"sorry_server,omitempty"`
	// Quorum is the least total weight of available servers the service
	// runs on; below it new clients go to the sorry server, or are refused
	// without one. 0: no quorum.
	Quorum  int      `yaml:"quorum,omitempty"`
	Servers []Server `yaml:"servers"`
}

// HealthCheck probes a real server every Interval; Fall failures in a row
// take it down, Rise successes in a row bring it back.
type HealthCheck struct {
	// Type is tcp (connect), http (GET Path, status in ExpectStatus, body
	// containing ExpectBody), udp (send Send, a reply containing Expect)
	// or exec (Command exits 0).
	Type     string   `yaml:"type"`
	Interval Duration `yaml:"interval,omitempty"` // default 5s
	Timeout  Duration `yaml:"timeout,omitempty"`  // default 2s
	Rise     int      `yaml:"rise,omitempty"`     // default 2
	Fall     int      `yaml:"fall,omitempty"`     // default 3
	// Start is the state before the first verdict: up (default) or down
	// (keepalived's alpha: no client until Rise checks pass).
	Start string `yaml:"start,omitempty"`
	// Port probes this port instead of the server's (keepalived's
	// connect_port); needed for a mark service's server without a port.
	Port         uint16 `yaml:"port,omitempty"`
	Path         string `yaml:"path,omitempty"`          // http; default /
	Host         string `yaml:"host,omitempty"`          // http Host header; default the server's address
	ExpectStatus string `yaml:"expect_status,omitempty"` // http; 200-399 (default), or one code
	ExpectBody   string `yaml:"expect_body,omitempty"`   // http; a substring of the body
	Send         string `yaml:"send,omitempty"`          // udp payload
	Expect       string `yaml:"expect,omitempty"`        // udp; a substring of the reply (empty: any reply)
	// Command is exec's argv; it runs with TETHER_SERVER (address:port),
	// TETHER_SERVER_ADDR and TETHER_SERVER_PORT in its environment.
	Command []string `yaml:"command,omitempty"`
}

// Persistence makes a service persistent; absent, every connection is
// scheduled on its own.
type Persistence struct {
	Timeout         Duration `yaml:"timeout,omitempty"`  // default 300s
	Netmask         string   `yaml:"netmask,omitempty"`  // IPv4: dotted mask or prefix length; default 255.255.255.255
	Netmask6        string   `yaml:"netmask6,omitempty"` // IPv6 prefix length 1..128; default 128
	ExpireQuiescent bool     `yaml:"expire_quiescent,omitempty"`
}

// Limits bound a service. Zero means no limit, except for the timeouts and
// attempts, which have defaults.
type Limits struct {
	MaxConnections          int      `yaml:"max_connections,omitempty"`
	MaxConnectionsPerServer int      `yaml:"max_connections_per_server,omitempty"`
	ConnectTimeout          Duration `yaml:"connect_timeout,omitempty"`  // default 5s
	ConnectAttempts         int      `yaml:"connect_attempts,omitempty"` // servers tried per connection, default 3
	IdleTimeout             Duration `yaml:"idle_timeout,omitempty"`     // default 0: none for tcp, 300s for a udp flow
	MaxFlows                int      `yaml:"max_flows,omitempty"`        // udp flows kept; default 65536
}

// Server is a real server.
type Server struct {
	Address string `yaml:"address"`
	Weight  *int   `yaml:"weight,omitempty"` // 0..65535, default 1; 0 is quiescent
	// HealthCheck replaces the service's for this server.
	HealthCheck *HealthCheck `yaml:"health_check,omitempty"`
}

// Defaults.
const (
	DefaultScheduler       = "wlc"
	DefaultConnectTimeout  = 5 * time.Second
	DefaultConnectAttempts = 3
	DefaultDrainTimeout    = 30 * time.Second
	DefaultTProxyPort      = 20080
	DefaultUDPIdleTimeout  = 300 * time.Second
	DefaultMaxFlows        = 65536
	DefaultUDPMaxFlows     = 262144
	DefaultQueueLength     = 4096
	DefaultMarkBase        = 0x7e000000
	DefaultCheckInterval   = 5 * time.Second
	DefaultCheckTimeout    = 2 * time.Second
	DefaultRise            = 2
	DefaultFall            = 3
)

// CheckTypes are the health check types.
var CheckTypes = []string{"tcp", "http", "udp", "exec"}

// Data path modes.
const (
	ModeProxy    = "proxy"
	ModeDirector = "director"
)

// Schedulers are the scheduler names a service may use (IPVS's).
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "sh", "mh", "sed", "nq"}

// Duration is a time.Duration written as Go writes one ("300s", "5m") or as
// a whole number of seconds (300), the way ipvsadm and keepalived write
// timeouts.
type Duration time.Duration

// UnmarshalYAML accepts "300s" or 300.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration such as 300s or 300, got a %s", n.Line, kindName(n.Kind))
	}
	if secs, err := strconv.ParseInt(n.Value, 10, 64); err == nil {
		*d = Duration(time.Duration(secs) * time.Second)
		return nil
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (want e.g. 300s, 5m or 300)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the Go form.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D is the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	}
	return "value"
}

// Error is one problem in a configuration file.
type Error struct {
	File string
	Line int    // 0 when unknown
	Key  string // e.g. services[1].servers[0].weight
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	if e.Key != "" {
		b.WriteString(": " + e.Key)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// Errors is every problem found in a file; a file is valid only without
// any.
type Errors []*Error

func (es Errors) Error() string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Load reads, validates and normalizes the file at path.
func Load(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, b)
}

// Parse validates and normalizes a configuration; name is used in errors.
func Parse(name string, b []byte) (*File, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, yamlErrors(name, err)
	}
	f := &File{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(f); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlErrors(name, err)
	}
	v := validator{file: name, lines: map[string]int{}}
	v.index(&root, "")
	v.check(f)
	if len(v.errs) > 0 {
		return nil, v.errs
	}
	f.normalize()
	return f, nil
}

// yamlErrors turns yaml.v3's messages ("line 3: field foo not found in type
// config.Service") into Errors naming the file.
func yamlErrors(name string, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		es := Errors{}
		for _, m := range te.Errors {
			es = append(es, lineError(name, m))
		}
		return es
	}
	return Errors{lineError(name, strings.TrimPrefix(err.Error(), "yaml: "))}
}

func lineError(name, msg string) *Error {
	e := &Error{File: name, Msg: msg}
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if i := strings.Index(rest, ":"); i > 0 {
			if n, err := strconv.Atoi(rest[:i]); err == nil {
				e.Line, e.Msg = n, strings.TrimSpace(rest[i+1:])
			}
		}
	}
	e.Msg = strings.ReplaceAll(e.Msg, "config.", "")
	return e
}

// validator collects every problem with its line.
type validator struct {
	file  string
	lines map[string]int // key path -> line
	errs  Errors
}

// index records the line of every key path in the document.
func (v *validator) index(n *yaml.Node, path string) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			v.index(c, path)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := n.Content[i].Value
			if path != "" {
				p = path + "." + p
			}
			v.lines[p] = n.Content[i].Line
			v.index(n.Content[i+1], p)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			v.lines[p] = c.Line
			v.index(c, p)
		}
	}
}

func (v *validator) errf(key, format string, a ...any) {
	line := v.lines[key]
	for k := key; line == 0 && k != ""; {
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
		line = v.lines[k]
	}
	v.errs = append(v.errs, &Error{File: v.file, Line: line, Key: key, Msg: fmt.Sprintf(format, a...)})
}

func (v *validator) check(f *File) {
	if f.Log.Level != "" {
		switch f.Log.Level {
		case "debug", "info", "warn", "error":
		default:
			v.errf("log.level", "%q is not debug, info, warn or error", f.Log.Level)
		}
	}
	if f.Log.Format != "" && f.Log.Format != "text" && f.Log.Format != "json" {
		v.errf("log.format", "%q is not text or json", f.Log.Format)
	}
	if f.Metrics.Listen != "" {
		if _, err := netip.ParseAddrPort(f.Metrics.Listen); err != nil {
			v.errf("metrics.listen", "%q is not an address:port (%v)", f.Metrics.Listen, err)
		}
	}
	if a := f.Admin; a.Listen != "" {
		if _, err := netip.ParseAddrPort(a.Listen); err != nil {
			v.errf("admin.listen", "%q is not an address:port (%v)", a.Listen, err)
		}
		if a.TokenFile == "" {
			v.errf("admin.listen", "needs admin.token_file: the TCP API takes a bearer token")
		}
	}
	if f.Admin.Socket != "" && f.Admin.Socket != "off" && !strings.HasPrefix(f.Admin.Socket, "/") {
		v.errf("admin.socket", "%q is not an absolute path (or off)", f.Admin.Socket)
	}
	if f.Affinity.Capacity < 0 {
		v.errf("affinity.capacity", "%d is negative", f.Affinity.Capacity)
	}
	if f.DrainTimeout < 0 {
		v.errf("drain_timeout", "%s is negative", f.DrainTimeout.D())
	}
	switch t := f.TProxyRouteTable; {
	case t < 0 || t > 0 && t >= 253 && t <= 255:
		v.errf("tproxy_route_table", "%d is not a free routing table (253 default, 254 main and 255 local are the kernel's)", t)
	}
	if f.UDPMaxFlows < 0 {
		v.errf("udp_max_flows", "%d is negative", f.UDPMaxFlows)
	}
	if f.TProxyRulePriority < 0 || f.TProxyRulePriority > 32765 {
		v.errf("tproxy_rule_priority", "%d is outside 1..32765 (main is at 32766)", f.TProxyRulePriority)
	}
	v.checkDirector(f)
	if len(v.errs) == 0 {
		portZeroToMarks(f)
	}
	set := v.checkMarks(f)
	if len(f.Services) == 0 {
		v.errf("services", "no services: nothing to balance")
	}
	names := map[string]string{}
	listens := map[string]string{}
	fwmarks := map[uint32]string{}
	for i := range f.Services {
		p := fmt.Sprintf("services[%d]", i)
		v.checkService(p, &f.Services[i], names, listens)
		if m := f.Services[i].Fwmark; m != 0 {
			if _, ok := set.ByMark(m); !ok {
				v.errf(p+".fwmark", "no class in marks has mark %d", m)
			}
			if other := fwmarks[m]; other != "" {
				v.errf(p+".fwmark", "mark %d is already the service of %s", m, other)
			}
			fwmarks[m] = p
		}
	}
	v.checkChoiceMarks(f, set)
}

func (v *validator) checkDirector(f *File) {
	if f.Mode != "" && f.Mode != ModeProxy && f.Mode != ModeDirector {
		v.errf("mode", "%q is not proxy or director", f.Mode)
	}
	d := f.Director
	if d.ExpireNodest != "" && d.ExpireNodest != "keep" && d.ExpireNodest != "reset" {
		v.errf("director.expire_nodest", "%q is not keep or reset", d.ExpireNodest)
	}
	if int(d.Queue)+int(max(d.Queues, 1)) > 65536 {
		v.errf("director.queues", "queues %d..%d go past 65535", d.Queue, int(d.Queue)+int(d.Queues)-1)
	}
}

// checkChoiceMarks: the marks that name director servers must not be
// class marks, or a class's flows would be taken for server choices.
func (v *validator) checkChoiceMarks(f *File, set marks.Set) {
	base := f.Director.MarkBase
	if base == 0 {
		base = DefaultMarkBase
	}
	n := uint32(0)
	for _, s := range f.Services {
		if s.Mode == ModeDirector || s.Mode == "" && f.Mode == ModeDirector {
			n += uint32(len(s.Servers))
			if s.SorryServer != "" {
				n++
			}
		}
	}
	if n == 0 {
		return
	}
	if base+n < base {
		v.errf("director.mark_base", "%#x + %d server choices passes 0xffffffff", base, n)
		return
	}
	for i, c := range set.Classes {
		if c.Mark >= base && c.Mark < base+n {
			v.errf(fmt.Sprintf("marks[%d].mark", i), "%#x is one of the director's server-choice marks %#x..%#x (director.mark_base)", c.Mark, base, base+n-1)
		}
	}
}

// ServiceMode is s's data path in f: its own mode, else the file's.
func (f *File) ServiceMode(s Service) string {
	switch {
	case s.Mode != "":
		return s.Mode
	case f.Mode != "":
		return f.Mode
	}
	return ModeProxy
}

// checkMarks parses the mark classes and validates them as a set.
func (v *validator) checkMarks(f *File) marks.Set {
	set := marks.Set{Mask: f.MarkMask}
	for i, mc := range f.Marks {
		p := fmt.Sprintf("marks[%d]", i)
		c := marks.Class{Name: mc.Name, Mark: mc.Mark}
		var err error
		if c.Protocols, err = marks.ParseProtocols(mc.Protocol); err != nil {
			v.errf(p+".protocol", "%v", err)
		}
		if c.Addrs, err = marks.ParseAddrs(mc.Addresses); err != nil {
			v.errf(p+".addresses", "%v", err)
		}
		if c.Ports, err = marks.ParsePorts(mc.Ports); err != nil {
			v.errf(p+".ports", "%v", err)
		}
		set.Classes = append(set.Classes, c)
	}
	for _, err := range set.Validate() {
		i := err.(*marks.Error).Index
		v.errf(fmt.Sprintf("marks[%d]", i), "%v", err)
	}
	return set
}

// MarkSet is the file's mark classes; valid after Parse.
func (f *File) MarkSet() marks.Set {
	set := marks.Set{Mask: f.MarkMask}
	for _, mc := range f.Marks {
		p, _ := marks.ParseProtocols(mc.Protocol)
		a, _ := marks.ParseAddrs(mc.Addresses)
		r, _ := marks.ParsePorts(mc.Ports)
		set.Classes = append(set.Classes, marks.Class{Name: mc.Name, Mark: mc.Mark, Protocols: p, Addrs: a, Ports: r})
	}
	return set
}

func (v *validator) checkService(p string, s *Service, names, listens map[string]string) {
	switch {
	case s.Name == "":
		v.errf(p+".name", "missing: every service needs a name")
	case names[s.Name] != "":
		v.errf(p+".name", "duplicate service name %q (also %s)", s.Name, names[s.Name])
	default:
		names[s.Name] = p
	}
	switch s.Protocol {
	case "", "tcp":
		if s.OnePacket {
			v.errf(p+".one_packet", "is for udp services")
		}
	case "udp":
		if s.Fwmark != 0 {
			v.errf(p+".protocol", "a mark service takes its protocols from its class: leave protocol out")
		}
	default:
		v.errf(p+".protocol", "%q is not tcp or udp", s.Protocol)
	}
	if s.Limits.MaxFlows < 0 {
		v.errf(p+".limits.max_flows", "is negative")
	}
	switch s.Mode {
	case "", ModeProxy:
	case ModeDirector:
		if s.OnePacket {
			v.errf(p+".one_packet", "is for the socket proxy: the director keeps each flow in conntrack")
		}
		if vip, err := netip.ParseAddrPort(s.Listen); err == nil {
			for j, sv := range s.Servers {
				if a, err := netip.ParseAddrPort(sv.Address); err == nil && a.Addr().Unmap().Is4() != vip.Addr().Unmap().Is4() {
					v.errf(fmt.Sprintf("%s.servers[%d].address", p, j), "%s: the director rewrites addresses and cannot cross from an %s VIP to an %s server (the socket proxy can)", sv.Address, family(vip.Addr()), family(a.Addr()))
				}
			}
			if a, err := netip.ParseAddrPort(s.SorryServer); err == nil && a.Addr().Unmap().Is4() != vip.Addr().Unmap().Is4() {
				v.errf(p+".sorry_server", "%s: the director cannot cross from an %s VIP to an %s server", s.SorryServer, family(vip.Addr()), family(a.Addr()))
			}
		}
	default:
		v.errf(p+".mode", "%q is not proxy or director", s.Mode)
	}
	switch {
	case s.Listen != "" && s.Fwmark != 0:
		v.errf(p+".fwmark", "a service has either listen or fwmark, not both")
	case s.Listen == "" && s.Fwmark == 0:
		v.errf(p+".listen", "missing: the VIP:port clients connect to (or fwmark: the mark of a class)")
	case s.Listen != "":
		v.checkListen(p, s, listens)
	}
	if s.Scheduler != "" && !contains(Schedulers, s.Scheduler) {
		v.errf(p+".scheduler", "%q is not one of %s", s.Scheduler, strings.Join(Schedulers, ", "))
	}
	if ps := s.Persistence; ps != nil {
		if ps.Timeout < 0 {
			v.errf(p+".persistence.timeout", "%s is negative", ps.Timeout.D())
		}
		if ps.Netmask != "" {
			if _, err := affinity.ParseMask4(ps.Netmask); err != nil {
				v.errf(p+".persistence.netmask", "%v", err)
			}
		}
		if ps.Netmask6 != "" {
			if _, err := affinity.ParseMask6(ps.Netmask6); err != nil {
				v.errf(p+".persistence.netmask6", "%v", err)
			}
		}
	}
	l := s.Limits
	for _, c := range []struct {
		key string
		neg bool
	}{
		{"max_connections", l.MaxConnections < 0},
		{"max_connections_per_server", l.MaxConnectionsPerServer < 0},
		{"connect_timeout", l.ConnectTimeout < 0},
		{"connect_attempts", l.ConnectAttempts < 0},
		{"idle_timeout", l.IdleTimeout < 0},
	} {
		if c.neg {
			v.errf(p+".limits."+c.key, "is negative")
		}
	}
	if len(s.Servers) == 0 {
		v.errf(p+".servers", "no servers")
	}
	seen := map[string]string{}
	for j, sv := range s.Servers {
		q := fmt.Sprintf("%s.servers[%d]", p, j)
		k, ok := v.checkServer(q+".address", sv.Address, s.Fwmark != 0)
		if ok {
			if other := seen[k]; other != "" {
				v.errf(q+".address", "server %s is listed twice (also %s)", k, other)
			}
			seen[k] = q
		}
		if sv.Weight != nil && (*sv.Weight < 0 || *sv.Weight > 65535) {
			v.errf(q+".weight", "%d is outside 0..65535", *sv.Weight)
		}
		hc, at := s.HealthCheck, p+".health_check"
		if sv.HealthCheck != nil {
			hc, at = sv.HealthCheck, q+".health_check"
			v.checkHealth(at, sv.HealthCheck)
		}
		if hc != nil && hc.Type != "exec" && hc.Port == 0 {
			if _, err := netip.ParseAddrPort(sv.Address); err != nil && ok {
				v.errf(at+".port", "missing: server %s has no port, so a %s check needs one", sv.Address, hc.Type)
			}
		}
	}
	if s.HealthCheck != nil {
		v.checkHealth(p+".health_check", s.HealthCheck)
	}
	v.checkSorry(p, s)
}

// checkSorry validates the sorry server and the quorum.
func (v *validator) checkSorry(p string, s *Service) {
	if s.SorryServer != "" {
		if k, ok := v.checkServer(p+".sorry_server", s.SorryServer, s.Fwmark != 0); ok {
			for _, sv := range s.Servers {
				if a, err := netip.ParseAddrPort(sv.Address); err == nil && a.String() == k || sv.Address == k {
					v.errf(p+".sorry_server", "%s is also one of the service's servers", k)
				}
			}
		}
	}
	total := 0
	for _, sv := range s.Servers {
		if sv.Weight == nil {
			total++
		} else {
			total += *sv.Weight
		}
	}
	switch {
	case s.Quorum < 0:
		v.errf(p+".quorum", "%d is negative", s.Quorum)
	case s.Quorum > total && len(s.Servers) > 0:
		v.errf(p+".quorum", "%d is more than the servers' total weight %d: the service could never run", s.Quorum, total)
	}
}

// checkHealth validates one health check, including fields that do not
// belong to its type.
func (v *validator) checkHealth(p string, hc *HealthCheck) {
	if !contains(CheckTypes, hc.Type) {
		if hc.Type == "" {
			v.errf(p+".type", "missing: one of %s", strings.Join(CheckTypes, ", "))
		} else {
			v.errf(p+".type", "%q is not one of %s", hc.Type, strings.Join(CheckTypes, ", "))
		}
		return
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{{"interval", hc.Interval}, {"timeout", hc.Timeout}} {
		if d.v < 0 {
			v.errf(p+"."+d.key, "%s is negative", d.v.D())
		}
	}
	if hc.Rise < 0 {
		v.errf(p+".rise", "%d is negative", hc.Rise)
	}
	if hc.Fall < 0 {
		v.errf(p+".fall", "%d is negative", hc.Fall)
	}
	if hc.Start != "" && hc.Start != "up" && hc.Start != "down" {
		v.errf(p+".start", "%q is not up or down", hc.Start)
	}
	only := func(key, typ string, set bool) {
		if set && hc.Type != typ {
			v.errf(p+"."+key, "is for %s checks, and this one is %s", typ, hc.Type)
		}
	}
	only("path", "http", hc.Path != "")
	only("host", "http", hc.Host != "")
	only("expect_status", "http", hc.ExpectStatus != "")
	only("expect_body", "http", hc.ExpectBody != "")
	only("send", "udp", hc.Send != "")
	only("expect", "udp", hc.Expect != "")
	only("command", "exec", len(hc.Command) > 0)
	if hc.Type == "exec" {
		if len(hc.Command) == 0 || hc.Command[0] == "" {
			v.errf(p+".command", "missing: the program to run and its arguments")
		}
		if hc.Port != 0 {
			v.errf(p+".port", "is for tcp, http and udp checks")
		}
	}
	if hc.Path != "" && !strings.HasPrefix(hc.Path, "/") {
		v.errf(p+".path", "%q does not start with /", hc.Path)
	}
	if hc.ExpectStatus != "" {
		if _, _, err := ParseStatusRange(hc.ExpectStatus); err != nil {
			v.errf(p+".expect_status", "%v", err)
		}
	}
}

// ParseStatusRange reads an HTTP status range: "200" or "200-399".
func ParseStatusRange(s string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	lo, err1 := strconv.Atoi(strings.TrimSpace(a))
	hi = lo
	var err2 error
	if isRange {
		hi, err2 = strconv.Atoi(strings.TrimSpace(b))
	}
	if err1 != nil || err2 != nil || lo < 100 || hi > 599 || lo > hi {
		return 0, 0, fmt.Errorf("%q is not a status code or range such as 200 or 200-399", s)
	}
	return lo, hi, nil
}

func (v *validator) checkListen(p string, s *Service, listens map[string]string) {
	ap, err := netip.ParseAddrPort(s.Listen)
	if err != nil {
		v.errf(p+".listen", "%q is not an address:port such as 198.18.0.10:80 or [2001:db8::1]:443", s.Listen)
		return
	}
	proto := s.Protocol
	if proto == "" {
		proto = "tcp"
	}
	k := proto + " " + ap.String()
	if ap.Port() == 0 && s.Persistence == nil {
		v.errf(p+".listen", "port 0 (every port of the VIP) needs persistence, as in ipvsadm")
	}
	if other := listens[k]; other != "" {
		v.errf(p+".listen", "%s is already the listen address of %s", k, other)
	}
	listens[k] = p
}

// checkServer validates a real server's address and returns its normal
// form. A mark service's server may omit the port: the client's original
// destination port is kept (IPVS's rule for mark services).
func (v *validator) checkServer(q, addr string, portOptional bool) (string, bool) {
	if addr == "" {
		v.errf(q, "missing")
		return "", false
	}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		if ap.Port() == 0 {
			v.errf(q, "%q has port 0; give the server's port%s", addr, map[bool]string{true: " or none", false: ""}[portOptional])
			return "", false
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String(), true
	}
	if a, err := netip.ParseAddr(addr); err == nil && portOptional {
		return a.Unmap().String(), true
	}
	if portOptional {
		v.errf(q, "%q is not an address or address:port", addr)
	} else {
		v.errf(q, "%q is not an address:port", addr)
	}
	return "", false
}

func family(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// normalize fills in every default, so that what `tether check` prints is
// what runs. It runs only on a valid File.
func (f *File) normalize() {
	def(&f.Log.Level, "info")
	def(&f.Log.Format, "text")
	def(&f.Affinity.Capacity, affinity.DefaultCapacity)
	def(&f.DrainTimeout, Duration(DefaultDrainTimeout))
	def(&f.UDPMaxFlows, DefaultUDPMaxFlows)
	if len(f.Marks) > 0 {
		def(&f.TProxyPort, DefaultTProxyPort)
	}
	if len(f.TProxyIngress) > 0 {
		def(&f.TProxyRouteTable, 100)
		def(&f.TProxyRulePriority, 1000)
	}
	def(&f.Mode, ModeProxy)
	director := false
	for i := range f.Services {
		s := &f.Services[i]
		def(&s.Mode, f.Mode)
		director = director || s.Mode == ModeDirector
		def(&s.Protocol, "tcp")
		def(&s.Scheduler, DefaultScheduler)
		if s.Listen != "" {
			s.Listen = serverKeyString(s.Listen)
		}
		if ps := s.Persistence; ps != nil {
			def(&ps.Timeout, Duration(affinity.DefaultTimeout))
			m, _ := affinity.ParseMask(ps.Netmask, ps.Netmask6)
			ps.Netmask = strings.Split(m.String(), "/")[0]
			ps.Netmask6 = strconv.Itoa(m.Bits6())
		}
		def(&s.Limits.ConnectTimeout, Duration(DefaultConnectTimeout))
		def(&s.Limits.ConnectAttempts, DefaultConnectAttempts)
		if s.Protocol == "udp" {
			def(&s.Limits.IdleTimeout, Duration(DefaultUDPIdleTimeout))
			def(&s.Limits.MaxFlows, DefaultMaxFlows)
		}
		s.HealthCheck.normalize()
		if s.SorryServer != "" {
			s.SorryServer = serverKeyString(s.SorryServer)
		}
		for j := range s.Servers {
			sv := &s.Servers[j]
			sv.HealthCheck.normalize()
			if sv.Weight == nil {
				w := 1
				sv.Weight = &w
			}
			sv.Address = serverKeyString(sv.Address)
		}
	}
	if director {
		d := &f.Director
		def(&d.Queues, 1)
		def(&d.QueueLength, DefaultQueueLength)
		def(&d.MarkBase, DefaultMarkBase)
		def(&d.ExpireNodest, "keep")
	}
}

// def sets *p to v when it is the zero value (unset in the file).
func def[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// normalize fills in a health check's defaults; nil stays nil.
func (hc *HealthCheck) normalize() {
	if hc == nil {
		return
	}
	def(&hc.Interval, Duration(DefaultCheckInterval))
	def(&hc.Timeout, Duration(DefaultCheckTimeout))
	def(&hc.Rise, DefaultRise)
	def(&hc.Fall, DefaultFall)
	def(&hc.Start, "up")
	if hc.Type == "http" {
		def(&hc.Path, "/")
		def(&hc.ExpectStatus, "200-399")
	}
}

// serverKeyString is a server address in normal form: IPv4-mapped
// addresses unmapped, with or without a port.
func serverKeyString(addr string) string {
	ap, _ := ParseServer(addr) // validated
	if ap.Port() == 0 {
		return ap.Addr().String()
	}
	return ap.String()
}

// ParseServer reads a server address: address:port, or an address alone
// (port 0: a mark service's server, which keeps the client's port).
// IPv4-mapped addresses are unmapped, so that a server has one form.
func ParseServer(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a.Unmap(), 0), nil
	}
	return netip.AddrPort{}, fmt.Errorf("server %q is not an address or address:port", s)
}

// Check is the health check of server sv of s: its own, else the
// service's; nil when neither has one.
func (s *Service) Check(sv Server) *HealthCheck {
	if sv.HealthCheck != nil {
		return sv.HealthCheck
	}
	return s.HealthCheck
}

// Mask is the service's persistence mask; the zero Mask when not
// persistent.
func (p *Persistence) Mask() affinity.Mask {
	m, _ := affinity.ParseMask(p.Netmask, p.Netmask6)
	return m
}

// Marshal renders the normalized file as YAML.
func (f *File) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(f); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}

// portZeroToMarks turns each persistent port-0 service (listen: VIP:0,
// every port of the VIP, as ipvsadm's) into a firewall-mark service over a
// class of the VIP's ports, since only the transparent data path can take
// every port. As in IPVS, a service on a specific port of the same VIP
// wins: its port is left out of the class. The mark is taken from the top
// of the mark mask down, skipping marks in use, so the same file always
// gives the same marks (templates are keyed by them).
func portZeroToMarks(f *File) {
	used := map[uint32]bool{}
	for _, m := range f.Marks {
		used[m.Mark] = true
	}
	mask := f.MarkMask
	if mask == 0 {
		mask = ^uint32(0)
	}
	low := mask & -mask
	next := mask
	for i := range f.Services {
		s := &f.Services[i]
		ap, err := netip.ParseAddrPort(s.Listen)
		if err != nil || ap.Port() != 0 || s.Persistence == nil {
			continue
		}
		vip := ap.Addr().Unmap()
		var taken []int
		for _, o := range f.Services {
			if oap, err := netip.ParseAddrPort(o.Listen); err == nil && oap.Addr().Unmap() == vip && oap.Port() != 0 {
				taken = append(taken, int(oap.Port()))
			}
		}
		for used[next] && next != 0 {
			next -= low
		}
		f.Marks = append(f.Marks, MarkClass{
			Name: "port0-" + s.Name, Mark: next, Protocol: "tcp",
			Addresses: []string{vip.String()}, Ports: portsExcept(taken),
		})
		used[next] = true
		s.Fwmark, s.Listen = next, ""
	}
}

// portsExcept is every port 1..65535 but the given ones, as ranges.
func portsExcept(taken []int) []string {
	slices.Sort(taken)
	var out []string
	from := 1
	for _, p := range taken {
		if p > from {
			out = append(out, rangeString(from, p-1))
		}
		from = max(from, p+1)
	}
	if from <= 65535 {
		out = append(out, rangeString(from, 65535))
	}
	return out
}

func rangeString(a, b int) string {
	if a == b {
		return strconv.Itoa(a)
	}
	return strconv.Itoa(a) + "-" + strconv.Itoa(b)
}
