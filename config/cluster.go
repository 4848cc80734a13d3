package config

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// checkCluster validates the cluster block.
func (v *validator) checkCluster(c *Cluster) {
	if c == nil {
		return
	}
	if c.Name != "" && strings.ContainsAny(c.Name, " \t\n") {
		v.errf("cluster.name", "%q has white space", c.Name)
	}
	if c.Bind != "" {
		if _, err := netip.ParseAddrPort(c.Bind); err != nil {
			v.errf("cluster.bind", "%q is not an address:port (%v)", c.Bind, err)
		}
	}
	if c.Advertise != "" {
		if ap, err := netip.ParseAddrPort(c.Advertise); err != nil {
			v.errf("cluster.advertise", "%q is not an address:port (%v)", c.Advertise, err)
		} else if ap.Addr().IsUnspecified() || ap.Port() == 0 {
			v.errf("cluster.advertise", "%q: the others cannot reach an unspecified address or port 0", c.Advertise)
		}
	}
	for i, j := range c.Join {
		if _, port, err := net.SplitHostPort(j); err != nil || port == "" {
			v.errf(fmt.Sprintf("cluster.join[%d]", i), "%q is not host:port", j)
		}
	}
	if c.JoinTimeout < 0 {
		v.errf("cluster.join_timeout", "%s is negative", c.JoinTimeout.D())
	}
	if d := c.PushPullInterval.D(); d != 0 && d < MinClusterPushPull {
		v.errf("cluster.push_pull_interval", "%s is shorter than %s", d, MinClusterPushPull)
	}
}
