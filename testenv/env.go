package testenv

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Spec describes a topology. The zero value is one client host with one
// source address, the load balancer and three backends.
type Spec struct {
	Clients        int // client hosts; default 1
	AddrsPerClient int // source addresses per client host; default 1
	Backends       int // backend hosts; default 3
	// Balancers, when set, builds an ECMP site instead of one load
	// balancer (ecmp.go): LB is then a router with a multipath route to
	// the VIP through that many balancer hosts.
	Balancers int
	// Label goes into the namespace names, after the prefix and the PID,
	// so that hosts of parallel envs never collide.
	Label string
}

func (s Spec) clients() int { return max(s.Clients, 1) }
func (s Spec) addrs() int   { return max(s.AddrsPerClient, 1) }
func (s Spec) backends() int {
	if s.Backends <= 0 {
		return 3
	}
	return s.Backends
}

// Prefix starts the name of every namespace testenv makes; `tether testenv
// down` removes the ones whose process is gone.
const Prefix = "tt"

// Addresses of the topology, all inside 198.18.0.0/15.
var (
	// VIP is the load balancer's virtual address, on the client side.
	VIP = netip.MustParseAddr("198.18.0.10")
	// LBClientSide and LBServerSide are the load balancer's addresses on
	// each network; LBServerSide is the backends' gateway.
	LBClientSide = netip.MustParseAddr("198.18.0.1")
	LBServerSide = netip.MustParseAddr("198.19.0.1")
)

// The same topology in IPv6, inside 2001:2::/48 (RFC 5180's benchmarking
// range): the client network is 2001:2::/64, the server network
// 2001:2:0:1::/64. Every host has both families.
var (
	VIP6          = netip.MustParseAddr("2001:2::10")
	LBClientSide6 = netip.MustParseAddr("2001:2::1")
	LBServerSide6 = netip.MustParseAddr("2001:2:0:1::1")
)

// ClientAddr6 is source number g's IPv6 address: four to a /120, as
// ClientAddr's are four to a /24.
func ClientAddr6(g int) netip.Addr {
	b := VIP6.As16()
	b[14], b[15] = byte(1+g/4), byte(10+g%4)
	return netip.AddrFrom16(b)
}

// BackendAddr6 is backend i's IPv6 address.
func BackendAddr6(i int) netip.Addr {
	b := LBServerSide6.As16()
	b[15] = byte(11 + i)
	return netip.AddrFrom16(b)
}

// ClientAddr is the address of source number g (counting over all client
// hosts): four to a /24, in 198.18.1.0 and up, so that masks group them.
func ClientAddr(g int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(1 + g/4), byte(10 + g%4)})
}

// BackendAddr is backend i's address.
func BackendAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 0, byte(11 + i)}) }

// Env is a built topology. Close removes every namespace, link and
// process it made.
type Env struct {
	Clients  []*Host
	LB       *Host
	Backends []*Host
	// Balancers are the ECMP site's load balancers (Spec.Balancers).
	Balancers []*Host

	id    string // prefix, PID and label
	named bool

	mu       sync.Mutex
	routedTo *Host // the host of RoutedSources
	hosts    []*Host
	procs    []*exec.Cmd
	servers  []*Server
	paths    []string
}

// New builds the topology of s. On error nothing is left behind.
func New(s Spec) (env *Env, err error) {
	e := &Env{id: fmt.Sprintf("%s%d", Prefix, os.Getpid()), named: os.Geteuid() == 0 && !inUserNS()}
	if s.Label != "" {
		e.id += "-" + s.Label
	}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if e.LB, err = e.newHost("lb"); err != nil {
		return nil, err
	}
	lb, err := netlink.NewHandleAt(e.LB.ns)
	if err != nil {
		return nil, fmt.Errorf("testenv: netlink in lb: %w", err)
	}
	defer lb.Close()
	cside := []netip.Prefix{prefixOf(LBClientSide, 16), prefixOf(VIP, 16), prefixOf(LBClientSide6, 64), prefixOf(VIP6, 64)}
	if s.Balancers > 0 { // the VIP is the balancers'
		cside = []netip.Prefix{cside[0], cside[2]}
	}
	brC, err := addBridge(lb, "br-c", cside...)
	if err != nil {
		return nil, err
	}
	brS, err := addBridge(lb, "br-s", prefixOf(LBServerSide, 24), prefixOf(LBServerSide6, 64))
	if err != nil {
		return nil, err
	}
	e.LB.Addrs = []netip.Addr{LBClientSide, VIP, LBServerSide}
	e.LB.Addrs6 = []netip.Addr{LBClientSide6, VIP6, LBServerSide6}
	if s.Balancers > 0 {
		e.LB.Name = "router"
		e.LB.Addrs, e.LB.Addrs6 = []netip.Addr{LBClientSide, LBServerSide}, []netip.Addr{LBClientSide6, LBServerSide6}
	}
	g := 0
	for k := range s.clients() {
		h, err := e.newHost(fmt.Sprintf("client%d", k))
		if err != nil {
			return nil, err
		}
		var addrs []netip.Prefix
		for range s.addrs() {
			h.Addrs = append(h.Addrs, ClientAddr(g))
			h.Addrs6 = append(h.Addrs6, ClientAddr6(g))
			addrs = append(addrs, prefixOf(ClientAddr(g), 16), prefixOf(ClientAddr6(g), 64))
			g++
		}
		if err := e.wire(lb, brC, fmt.Sprintf("c%d", k), "eth0", h, addrs, LBClientSide, LBClientSide6); err != nil {
			return nil, err
		}
		e.Clients = append(e.Clients, h)
	}
	for b := range s.backends() {
		h, err := e.newHost(fmt.Sprintf("backend%d", b))
		if err != nil {
			return nil, err
		}
		h.Addrs, h.Addrs6 = []netip.Addr{BackendAddr(b)}, []netip.Addr{BackendAddr6(b)}
		if err := e.wire(lb, brS, fmt.Sprintf("s%d", b), "eth0", h, []netip.Prefix{prefixOf(BackendAddr(b), 24), prefixOf(BackendAddr6(b), 64)}, LBServerSide, LBServerSide6); err != nil {
			return nil, err
		}
		e.Backends = append(e.Backends, h)
	}
	if s.Balancers > 0 {
		if err := e.ecmp(lb, brS, s.Balancers); err != nil {
			return nil, err
		}
	}
	// Kernel NAT (the director) forwards between the two sides.
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := e.LB.Sysctl(k, "1"); err != nil {
			return nil, err
		}
	}
	// With br_netfilter loaded, frames through the lb's bridges would run
	// the IP hooks at bridge level, where TPROXY's socket is lost before
	// the IP layer. The bridges here are plain switches: turn that off.
	for _, k := range []string{"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"} {
		if _, err := os.Stat(filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))); err == nil {
			if err := e.LB.Sysctl(k, "0"); err != nil {
				return nil, err
			}
		}
	}
	return e, nil
}

func prefixOf(a netip.Addr, bits int) netip.Prefix { return netip.PrefixFrom(a, bits) }

// newHost makes a namespace with its loopback up. As root (outside a user
// namespace) it is also bind-mounted under /run/netns, so that ip netns
// and `tether testenv` see it.
func (e *Env) newHost(name string) (*Host, error) {
	h := &Host{Name: name, env: e}
	mk := func() error {
		// Unshare on a locked thread, keep a handle, go back; the new
		// namespace lives on through the handle (and the bind mount).
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			return fmt.Errorf("testenv: new namespace: %w", err)
		}
		h.ns = ns
		if e.named {
			h.NS = e.id + "-" + name
			if err := bindNS(h.NS); err != nil {
				netns.Set(orig)
				return err
			}
		}
		return netns.Set(orig)
	}
	if err := lockedDo(mk); err != nil {
		if h.ns.IsOpen() {
			h.ns.Close()
		}
		return nil, err
	}
	e.mu.Lock()
	e.hosts = append(e.hosts, h)
	e.mu.Unlock()
	nh, err := netlink.NewHandleAt(h.ns)
	if err != nil {
		return nil, fmt.Errorf("testenv: netlink in %s: %w", name, err)
	}
	defer nh.Close()
	lo, err := nh.LinkByName("lo")
	if err == nil {
		err = nh.LinkSetUp(lo)
	}
	if err != nil {
		return nil, fmt.Errorf("testenv: loopback up in %s: %w", name, err)
	}
	return h, nil
}

// lockedDo runs f on a locked thread that is thrown away if f fails to
// put it back in its namespace.
func lockedDo(f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := f()
		if err == nil {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}

func bindNS(name string) error {
	dir := "/run/netns"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("testenv: namespace %s: %w", name, err)
	}
	f.Close()
	self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
	if err := unix.Mount(self, path, "bind", unix.MS_BIND, ""); err != nil {
		os.Remove(path)
		return fmt.Errorf("testenv: name namespace %s: %w", name, err)
	}
	return nil
}

func addBridge(h *netlink.Handle, name string, addrs ...netip.Prefix) (netlink.Link, error) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("testenv: bridge %s: %w", name, err)
	}
	for _, a := range addrs {
		if err := h.AddrAdd(br, nlAddr(a)); err != nil {
			return nil, fmt.Errorf("testenv: address %s on %s: %w", a, name, err)
		}
	}
	if err := h.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("testenv: %s up: %w", name, err)
	}
	return br, nil
}

// nlAddr is p as an address to add; IPv6 ones skip duplicate address
// detection, which would hold them back for a second or two.
func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// wire links host h to the bridge br in the load balancer with a veth pair
// (name in the lb, peer in h), gives h its addresses and default routes
// through the gateways given.
func (e *Env) wire(lb *netlink.Handle, br netlink.Link, name, peer string, h *Host, addrs []netip.Prefix, gws ...netip.Addr) error {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MasterIndex: br.Attrs().Index}, PeerName: peer, PeerNamespace: netlink.NsFd(int(h.ns))}
	if err := lb.LinkAdd(veth); err != nil {
		return fmt.Errorf("testenv: veth %s to %s: %w", name, h.Name, err)
	}
	end, err := lb.LinkByName(name)
	if err == nil {
		err = lb.LinkSetUp(end)
	}
	if err != nil {
		return fmt.Errorf("testenv: veth %s up: %w", name, err)
	}
	nh, err := netlink.NewHandleAt(h.ns)
	if err != nil {
		return err
	}
	defer nh.Close()
	eth, err := nh.LinkByName(peer)
	if err != nil {
		return fmt.Errorf("testenv: %s in %s: %w", peer, h.Name, err)
	}
	for _, a := range addrs {
		if err := nh.AddrAdd(eth, nlAddr(a)); err != nil {
			return fmt.Errorf("testenv: address %s in %s: %w", a, h.Name, err)
		}
	}
	if err := nh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("testenv: %s up in %s: %w", peer, h.Name, err)
	}
	for _, g := range gws {
		if err := nh.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: g.AsSlice()}); err != nil {
			return fmt.Errorf("testenv: default route via %s in %s: %w", g, h.Name, err)
		}
	}
	return nil
}

func (e *Env) track(cmd *exec.Cmd) {
	e.mu.Lock()
	e.procs = append(e.procs, cmd)
	e.mu.Unlock()
}

// Hosts are all hosts: the load balancer, the clients, the backends.
func (e *Env) Hosts() []*Host {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*Host(nil), e.hosts...)
}

// Close stops the processes started in the hosts (SIGTERM, SIGKILL after
// 5 s) and removes every namespace; the links go with them.
func (e *Env) Close() error {
	e.mu.Lock()
	procs, hosts, servers, paths := e.procs, e.hosts, e.servers, e.paths
	e.procs, e.hosts, e.servers, e.paths = nil, nil, nil, nil
	e.mu.Unlock()
	defer func() {
		for _, p := range paths {
			os.RemoveAll(p)
		}
	}()
	var errs []error
	for _, s := range servers {
		s.Close()
	}
	for _, p := range procs {
		if p.Process == nil || p.ProcessState != nil {
			continue
		}
		pgid := -p.Process.Pid // Start made it a group leader
		syscall.Kill(pgid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(pgid, syscall.SIGKILL)
			<-done
		}
		syscall.Kill(pgid, syscall.SIGKILL) // children that outlived it
	}
	// Processes that left their group (vsftpd's sessions call setsid) are
	// still in the hosts' namespaces: anything there was started there.
	killInNamespaces(hosts)
	for _, h := range hosts {
		if h.NS != "" {
			if err := netns.DeleteNamed(h.NS); err != nil {
				errs = append(errs, fmt.Errorf("testenv: remove %s: %w", h.NS, err))
			}
		}
		h.ns.Close()
	}
	return errors.Join(errs...)
}

// killInNamespaces SIGKILLs every process whose network namespace is one
// of the hosts'.
func killInNamespaces(hosts []*Host) {
	inodes := map[string]bool{}
	for _, h := range hosts {
		var st unix.Stat_t
		if unix.Fstat(int(h.ns), &st) == nil {
			inodes[fmt.Sprintf("net:[%d]", st.Ino)] = true
		}
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if link, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "net")); err == nil && inodes[link] {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
