package proxy

import (
	"fmt"
	"net/netip"

	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/cluster"
	"github.com/tetherlb/tether/config"
)

// startCluster joins the cluster cfg names, if any. The services are in
// the table by then: a peer's templates of unknown services are ignored.
func (p *Proxy) startCluster(cfg *config.File) error {
	c := cfg.Cluster
	if c == nil {
		return nil
	}
	var key []byte
	if c.SecretKeyFile != "" {
		k, err := cluster.ReadKeyFile(c.SecretKeyFile)
		if err != nil {
			return fmt.Errorf("cluster.secret_key_file: %w", err)
		}
		key = k
	}
	bind, err := netip.ParseAddrPort(c.Bind)
	if err != nil {
		return fmt.Errorf("cluster.bind: %w", err) // validated; a File built by hand
	}
	var adv netip.AddrPort
	if c.Advertise != "" {
		if adv, err = netip.ParseAddrPort(c.Advertise); err != nil {
			return fmt.Errorf("cluster.advertise: %w", err)
		}
	}
	if key == nil {
		p.log.Warn("cluster: gossip is not encrypted; set cluster.secret_key_file unless the network is trusted", "bind", c.Bind)
	}
	// Start runs on the control loop, in the proxy's namespace: the gossip
	// sockets are made there.
	updates := make(chan cluster.ServerUpdate, 256)
	n, err := cluster.Start(cluster.Config{
		Name: c.Name, Bind: bind, Advertise: adv, Join: c.Join, SecretKey: key, Label: c.Label,
		Table: p.table, Logger: p.log, JoinTimeout: c.JoinTimeout.D(), PushPullInterval: c.PushPullInterval.D(),
		MaxHolds: cfg.Affinity.Capacity, MaxStateTemplates: 2 * cfg.Affinity.Capacity,
		ServerUpdates: updates,
	})
	if err != nil {
		return err
	}
	p.cluster.Store(n)
	p.peerStop, p.peerDone = make(chan struct{}), make(chan struct{})
	go p.followPeerServers(updates, p.peerStop, p.peerDone)
	return nil
}

// followPeerServers applies the server changes operators made on peers
// (tether server set there), on the control loop as a local one. It hands
// each to the loop without waiting for it, so that stopCluster, which runs
// on the loop, can stop it.
func (p *Proxy) followPeerServers(updates <-chan cluster.ServerUpdate, stop, done chan struct{}) {
	defer close(done)
	for {
		select {
		case <-stop:
			return
		case u := <-updates:
			apply := func() {
				if err := p.inNamespace(func() error { return p.setServer(u.Service, u.Server, u.Change) }); err != nil {
					p.log.Warn("cluster: a peer's server change does not apply here", "peer", u.From, "service", u.Service, "server", u.Server, "err", err)
					return
				}
				p.log.Info("cluster: server changed by a peer", "peer", u.From, "service", u.Service, "server", u.Server, "change", u.Change)
			}
			select {
			case p.ctl.reqs <- apply:
			case <-p.ctl.done:
				return
			case <-stop:
				return
			}
		}
	}
}

// stopCluster leaves the cluster.
func (p *Proxy) stopCluster() error {
	n := p.cluster.Swap(nil)
	if n == nil {
		return nil
	}
	close(p.peerStop)
	<-p.peerDone
	err := n.Close()
	if err != nil {
		return fmt.Errorf("cluster: leaving: %w", err)
	}
	return nil
}

// ClusterReady is closed once the instance has its peers' templates, or
// needs none: no cluster, nothing to join, or no peer answered in time.
// `tether run` says ready only then.
func (p *Proxy) ClusterReady() <-chan struct{} {
	if n := p.clusterNode(); n != nil {
		return n.ReadyC()
	}
	closed := make(chan struct{})
	close(closed)
	return closed
}

func (p *Proxy) clusterNode() *cluster.Node { return p.cluster.Load() }

// ErrNoCluster: the configuration has no cluster block.
var ErrNoCluster = fmt.Errorf("this tether is in no cluster (its configuration has no cluster block): %w", api.ErrNotFound)

// Cluster is the cluster as this instance sees it.
func (p *Proxy) Cluster() (api.ClusterStatus, error) {
	n := p.clusterNode()
	if n == nil {
		return api.ClusterStatus{}, ErrNoCluster
	}
	st := n.Stats()
	out := api.ClusterStatus{Ready: st.Ready, QueueDepth: st.QueueDepth, Dropped: st.Dropped}
	for _, m := range n.Members() {
		out.Members = append(out.Members, api.ClusterMember{Name: m.Name, Addr: m.Addr, State: m.State, Self: m.Self, Templates: m.Templates, Holds: m.Holds, Lag: m.Lag})
	}
	return out, nil
}
