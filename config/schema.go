package config

import (
	"net/netip"
	"time"

	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/marks"
	"github.com/tetherlb/tether/sched"
)

// File is the whole configuration file.
type File struct {
	// Log holds the log settings; the command-line flags override them.
	Log Log `yaml:"log,omitempty"`
	// Snapshot is where persistence templates are saved on stop and
	// restored from on start. Empty: no snapshot.
	Snapshot string `yaml:"snapshot,omitempty"`
	// SnapshotInterval is how often the snapshot is written while tether
	// runs (and after every reload), so that a crash or an OOM kill costs
	// at most that much of the templates (default 30s when there is a
	// snapshot).
	SnapshotInterval Duration `yaml:"snapshot_interval,omitempty"`
	// AccessLog logs a line for every TCP connection and UDP flow when it
	// ends; off by default.
	AccessLog AccessLog `yaml:"access_log,omitempty"`
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
	// TProxy chooses how mark services' TCP flows reach tether: auto (the
	// default) listens on each (address, port) of a class of single local
	// addresses and at most MaxListenPairs pairs, as a `listen:` service
	// does, and TPROXYs the rest; always TPROXYs every class.
	TProxy string `yaml:"tproxy,omitempty"`
	// TProxyIngress names the interfaces clients come in through, for the
	// policy routing a VIP that is not a local address needs (ip rule iif
	// IF fwmark M lookup TABLE). Empty: no policy routing (local VIPs).
	TProxyIngress []string `yaml:"tproxy_ingress,omitempty"`
	// TProxyRouteTable and TProxyRulePriority place that routing; default
	// 100 and 1000.
	TProxyRouteTable   int `yaml:"tproxy_route_table,omitempty"`
	TProxyRulePriority int `yaml:"tproxy_rule_priority,omitempty"`
	// UDPMaxFlows bounds the UDP flows of all services together; 0 (the
	// default) derives it from the descriptor limit (package budget).
	UDPMaxFlows int `yaml:"udp_max_flows,omitempty"`
	// Mode is the data path of services that name none: proxy (default)
	// or director.
	Mode Mode `yaml:"mode,omitempty"`
	// Director sets up the NFQUEUE director, for services in mode director.
	Director Director `yaml:"director,omitempty"`
	// Cluster shares the persistence templates with other tether
	// instances; off when absent.
	Cluster  *Cluster  `yaml:"cluster,omitempty"`
	Services []Service `yaml:"services"`
	// MarkSet is Marks parsed, with MarkMask: the classes as the nft
	// rules and the transparent proxy match them.
	MarkSet marks.Set `yaml:"-"`
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
	ExpireNodest ExpireNodest `yaml:"expire_nodest,omitempty"`
	// KernelTemplates (default true) mirrors persistence templates into
	// the kernel, so that a returning client's flows never go up the
	// queue; false queues every new flow.
	KernelTemplates *bool `yaml:"kernel_templates,omitempty"`
}

// MarkClass is one firewall-mark class.
type MarkClass struct {
	Name      string   `yaml:"name"`
	Mark      uint32   `yaml:"mark"`
	Protocol  string   `yaml:"protocol,omitempty"` // tcp (default), udp or both
	Addresses []string `yaml:"addresses"`          // destination addresses or prefixes
	Ports     []string `yaml:"ports"`              // 80, 30000-30099, or all
}

// AccessLog settings: a line per ended connection or flow (service,
// client, server, bytes each way, duration, how it ended) through the log
// and its format.
type AccessLog struct {
	Enabled bool `yaml:"enabled,omitempty"`
	// Sample is the fraction of connections logged, 0 < Sample <= 1
	// (default 1: every one).
	Sample float64 `yaml:"sample,omitempty"`
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

// Cluster settings: several instances, one set of templates (package
// cluster, on memberlist).
type Cluster struct {
	// Name is this instance's name among them (default: the host name);
	// each instance's must differ.
	Name string `yaml:"name,omitempty"`
	// Bind is the gossip address:port, UDP and TCP (default
	// 0.0.0.0:7946); Advertise the address:port the others reach this
	// instance at (default: Bind, or the host's first private address
	// when Bind is 0.0.0.0).
	Bind      string `yaml:"bind,omitempty"`
	Advertise string `yaml:"advertise,omitempty"`
	// Join lists other instances, host:port; an instance joins through
	// any that answers. Empty: the first instance.
	Join []string `yaml:"join,omitempty"`
	// SecretKeyFile holds the base64 of a 16, 24 or 32-byte key
	// (AES-GCM) that every instance shares; a file others can read is
	// refused. Empty: gossip in the clear, for a trusted network only.
	SecretKeyFile string `yaml:"secret_key_file,omitempty"`
	// Label keeps clusters on one network apart (memberlist's label).
	Label string `yaml:"label,omitempty"`
	// JoinTimeout bounds how long a joining instance waits for a peer's
	// full state before it says ready anyway (default 10s).
	JoinTimeout Duration `yaml:"join_timeout,omitempty"`
	// PushPullInterval is how often two instances exchange their full
	// state, which repairs lost broadcasts (default 15s).
	PushPullInterval Duration `yaml:"push_pull_interval,omitempty"`
}

// Affinity settings.
type Affinity struct {
	Capacity int `yaml:"capacity,omitempty"` // templates; default 1048576
}

// Service is a virtual service.
type Service struct {
	Name     string   `yaml:"name"`
	Protocol Protocol `yaml:"protocol,omitempty"` // tcp (default) or udp
	Listen   string   `yaml:"listen,omitempty"`   // VIP:port; or Fwmark
	// VIP is Listen parsed (the zero AddrPort for a mark service).
	VIP netip.AddrPort `yaml:"-"`
	// Fwmark makes this a firewall-mark service: the flows of the mark
	// class with this mark, on every address, port and protocol it covers.
	Fwmark      uint32       `yaml:"fwmark,omitempty"`
	Scheduler   sched.Name   `yaml:"scheduler,omitempty"`
	Persistence *Persistence `yaml:"persistence,omitempty"`
	// OnePacket schedules every datagram on its own and keeps no flow
	// (ipvsadm's -o, for DNS-like traffic); udp only.
	OnePacket bool `yaml:"one_packet,omitempty"`
	// Mode is the data path: proxy (socket proxy, default) or director
	// (NFQUEUE: tether picks the server of a new flow, the kernel
	// forwards it).
	Mode   Mode   `yaml:"mode,omitempty"`
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
	// Sorry is SorryServer parsed; valid when SorryServer is set.
	Sorry netip.AddrPort `yaml:"-"`
	// Quorum is the least total weight of available servers the service
	// runs on; below it new clients go to the sorry server, or are refused
	// without one. 0: no quorum.
	Quorum int `yaml:"quorum,omitempty"`
	// QuorumUp and QuorumDown are commands (argv) run when the service
	// gets back to its quorum and when it falls below it (keepalived's
	// quorum_up, quorum_down), with TETHER_SERVICE and TETHER_QUORUM
	// (up or down) in their environment.
	QuorumUp   []string `yaml:"quorum_up,omitempty"`
	QuorumDown []string `yaml:"quorum_down,omitempty"`
	// SendProxy sends a PROXY protocol header (v1 or v2) to the service's
	// servers before the client's bytes, with the client's address and
	// what it connected to (a mark service's original destination): TCP,
	// socket and transparent proxy. A server's own setting replaces it.
	SendProxy ProxyProtocol `yaml:"send_proxy,omitempty"`
	// AcceptProxy are the sources (a balancer in front of tether) whose
	// connections start with a PROXY header, v1 or v2: their client is the
	// header's source, for persistence, access lists, logs and send_proxy.
	// Connections from elsewhere are their own clients. TCP only.
	AcceptProxy []string `yaml:"accept_proxy,omitempty"`
	// AcceptProxyNets is AcceptProxy parsed.
	AcceptProxyNets []netip.Prefix `yaml:"-"`
	// Allow and Deny are client addresses or prefixes: a client in Deny
	// is refused, and so is one outside a non-empty Allow (a TCP client
	// gets a reset, a UDP one nothing). Deny beats Allow.
	Allow []string `yaml:"allow,omitempty"`
	Deny  []string `yaml:"deny,omitempty"`
	// AllowNets and DenyNets are Allow and Deny parsed.
	AllowNets []netip.Prefix `yaml:"-"`
	DenyNets  []netip.Prefix `yaml:"-"`
	Servers   []Server       `yaml:"servers"`
}

// Admits says whether the service takes client a (its access lists).
func (s *Service) Admits(a netip.Addr) bool {
	return !inAny(s.DenyNets, a) && (len(s.AllowNets) == 0 || inAny(s.AllowNets, a))
}

// TrustsProxy says whether a connection from a starts with a PROXY
// header (accept_proxy's sources).
func (s *Service) TrustsProxy(a netip.Addr) bool { return inAny(s.AcceptProxyNets, a) }

func inAny(nets []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range nets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// HealthCheck probes a real server every Interval; Fall failures in a row
// take it down, Rise successes in a row bring it back.
type HealthCheck struct {
	// Type is tcp (connect), http (GET Path, status in ExpectStatus, body
	// containing ExpectBody), https (the same over TLS), smtp, dns, udp (send Send, a reply containing Expect)
	// or exec (Command exits 0).
	Type     CheckType `yaml:"type"`
	Interval Duration  `yaml:"interval,omitempty"` // default 5s
	Timeout  Duration  `yaml:"timeout,omitempty"`  // default 2s
	Rise     int       `yaml:"rise,omitempty"`     // default 2
	Fall     int       `yaml:"fall,omitempty"`     // default 3
	// Start is the state before the first verdict: up (default) or down
	// (keepalived's alpha: no client until Rise checks pass).
	Start CheckStart `yaml:"start,omitempty"`
	// Port probes this port instead of the server's (keepalived's
	// connect_port); needed for a mark service's server without a port.
	Port         uint16 `yaml:"port,omitempty"`
	Path         string `yaml:"path,omitempty"`          // http; default /
	Host         string `yaml:"host,omitempty"`          // http Host header; default the server's address
	ExpectStatus string `yaml:"expect_status,omitempty"` // http; 200-399 (default), or one code
	ExpectBody   string `yaml:"expect_body,omitempty"`   // http; a substring of the body
	// Digest is the MD5 of the whole body, in hex (keepalived's digest);
	// http and https.
	Digest string `yaml:"digest,omitempty"`
	// SNI is the TLS server name an https check sends; default: Host.
	SNI string `yaml:"sni,omitempty"`
	// VerifyTLS checks the server's certificate against the system's
	// roots and SNI (or Host); off by default, as keepalived's SSL_GET.
	VerifyTLS bool   `yaml:"verify_tls,omitempty"`
	Helo      string `yaml:"helo,omitempty"`       // smtp: the HELO name; default localhost
	QueryName string `yaml:"query_name,omitempty"` // dns: default "."
	QueryType string `yaml:"query_type,omitempty"` // dns: A, AAAA, SOA (default), NS, MX, TXT, CNAME...
	Send      string `yaml:"send,omitempty"`       // udp payload
	Expect    string `yaml:"expect,omitempty"`     // udp; a substring of the reply (empty: any reply)
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
	// MaxClientConnections bounds the open connections and UDP flows of one
	// client group (one template); 0: no limit.
	MaxClientConnections int `yaml:"max_client_connections,omitempty"`
	// Mask is Netmask and Netmask6 parsed.
	Mask affinity.Mask `yaml:"-"`
}

// Limits bound a service. Zero derives a connection or flow cap from the
// descriptor limit; zero per-server connections means no limit of its
// own; the timeouts and attempts have defaults.
type Limits struct {
	// MaxConnections bounds open connections; 0 derives it from the
	// descriptor limit (package budget), shared with the other services.
	MaxConnections          int      `yaml:"max_connections,omitempty"`
	MaxConnectionsPerServer int      `yaml:"max_connections_per_server,omitempty"`
	ConnectTimeout          Duration `yaml:"connect_timeout,omitempty"`  // default 5s
	ConnectAttempts         int      `yaml:"connect_attempts,omitempty"` // servers tried per connection, default 3
	IdleTimeout             Duration `yaml:"idle_timeout,omitempty"`     // default 0: none for tcp, 300s for a udp flow
	MaxFlows                int      `yaml:"max_flows,omitempty"`        // udp flows kept; 0: derived from the descriptor limit
}

// Server is a real server.
type Server struct {
	Address string `yaml:"address"`
	// Addr is Address parsed; port 0 for a mark service's server that
	// keeps the client's port.
	Addr   netip.AddrPort `yaml:"-"`
	Weight *int           `yaml:"weight,omitempty"` // 0..65535, default 1; 0 is quiescent
	// HealthCheck replaces the service's for this server.
	HealthCheck *HealthCheck `yaml:"health_check,omitempty"`
	// SendProxy replaces the service's send_proxy for this server.
	SendProxy ProxyProtocol `yaml:"send_proxy,omitempty"`
	// MaxConnections (ipvsadm -x) replaces the service's
	// max_connections_per_server: at this many open connections the server
	// takes no new client until it is below ResumeConnections (ipvsadm -y;
	// 0: three quarters of MaxConnections, as IPVS). Clients with a
	// template keep the server, as in IPVS.
	MaxConnections    int `yaml:"max_connections,omitempty"`
	ResumeConnections int `yaml:"resume_connections,omitempty"`
}

// Defaults.
const (
	DefaultConnectTimeout  = 5 * time.Second
	DefaultConnectAttempts = 3
	DefaultDrainTimeout    = 30 * time.Second
	// DefaultSnapshotInterval and MinSnapshotInterval: how often the
	// snapshot is written, by default and at the most.
	DefaultSnapshotInterval = 30 * time.Second
	MinSnapshotInterval     = 100 * time.Millisecond
	DefaultTProxyPort       = 20080
	// MaxListenPairs bounds the (address, port)s of a mark class that
	// tether listens on instead of TPROXYing it (TProxy auto).
	MaxListenPairs = 16
	// DefaultTProxyRouteTable and DefaultTProxyRulePriority place the
	// policy routing of non-local VIPs.
	DefaultTProxyRouteTable   = 100
	DefaultTProxyRulePriority = 1000
	DefaultUDPIdleTimeout     = 300 * time.Second
	// The cluster's gossip address (memberlist's usual port) and timings.
	DefaultClusterBind        = "0.0.0.0:7946"
	DefaultClusterJoinTimeout = 10 * time.Second
	DefaultClusterPushPull    = 15 * time.Second
	// MinClusterPushPull bounds how often full states are exchanged.
	MinClusterPushPull   = time.Second
	DefaultQueueLength   = 4096
	DefaultMarkBase      = 0x7e000000
	DefaultCheckInterval = 5 * time.Second
	// MinCheckInterval is the shortest health-check interval allowed.
	MinCheckInterval    = 10 * time.Millisecond
	DefaultCheckTimeout = 2 * time.Second
	DefaultRise         = 2
	DefaultFall         = 3
)

// ServiceMode is s's data path in f: its own mode, else the file's.
func (f *File) ServiceMode(s Service) Mode {
	switch {
	case s.Mode != "":
		return s.Mode
	case f.Mode != "":
		return f.Mode
	}
	return ModeProxy
}

// KernelTemplatesOn is director.kernel_templates, true unless set false.
func (d Director) KernelTemplatesOn() bool { return d.KernelTemplates == nil || *d.KernelTemplates }

// KernelTemplates says whether the director mirrors s's templates into the
// kernel: a persistent director service with nothing the queue must count
// for each flow (max_client_connections, max_connections, quorum), unless
// director.kernel_templates is false. Access lists are rules ahead of the
// map in the kernel.
func (f *File) KernelTemplates(s Service) bool {
	return f.Director.KernelTemplatesOn() && f.ServiceMode(s) == ModeDirector && s.Persistence != nil && s.Persistence.MaxClientConnections == 0 &&
		s.Limits.MaxConnections == 0 && s.Quorum == 0
}

// Check is the health check of server sv of s: its own, else the
// service's; nil when neither has one.
func (s *Service) Check(sv Server) *HealthCheck {
	if sv.HealthCheck != nil {
		return sv.HealthCheck
	}
	return s.HealthCheck
}

// ServiceKey identifies a service across reloads, as IPVS does: its
// protocol and listen address, or its mark. A renamed service with the
// same key keeps its socket and its templates.
type ServiceKey struct {
	VIP  netip.AddrPort // the zero AddrPort for a mark service
	UDP  bool
	Mark uint32
}

// Key is the service's identity.
func (s *Service) Key() ServiceKey {
	if s.Fwmark != 0 {
		return ServiceKey{Mark: s.Fwmark}
	}
	return ServiceKey{VIP: s.VIP, UDP: s.Protocol == UDP}
}

// HasDirector reports whether a service of f runs in director mode.
func (f *File) HasDirector() bool {
	for _, s := range f.Services {
		if f.ServiceMode(s) == ModeDirector {
			return true
		}
	}
	return false
}
