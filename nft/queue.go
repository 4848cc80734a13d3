package nft

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// ErrNoQueue is returned by ProbeQueue when the kernel has neither queue
// statement.
var ErrNoQueue = errors.New("this kernel can queue packets neither with nft's queue statement (CONFIG_NFT_QUEUE) nor with the xtables NFQUEUE target (CONFIG_NFT_COMPAT and CONFIG_NETFILTER_XT_TARGET_NFQUEUE)")

// ProbeQueue finds which queue statement the kernel has: it tries each in
// a batch that creates and deletes a scratch table, so nothing stays.
// native reports nft's own queue statement.
func ProbeQueue(c *nftables.Conn, fam nftables.TableFamily) (native bool, err error) {
	try := func(q expr.Any) error {
		t := &nftables.Table{Name: "tether_probe", Family: fam}
		c.AddTable(t)
		ch := c.AddChain(&nftables.Chain{Name: "probe", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityFilter})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{q}})
		c.DelTable(t)
		return c.Flush()
	}
	nativeErr := try((Director{Queue: Queue{Native: true}}).queue())
	if nativeErr == nil {
		return true, nil
	}
	xtErr := try((Director{}).queue())
	if xtErr == nil {
		return false, nil
	}
	return false, fmt.Errorf("%w (native: %v; xtables: %v)", ErrNoQueue, nativeErr, xtErr)
}

// keepTableName is the table of the NAT anchor (see AddNATAnchor).
const keepTableName = "tether_nat_anchor"

// AddNATAnchor queues an unowned table of nat chains, one a counter of new
// flows. The kernel tracks and translates established flows only while
// some rule holds conntrack and some nat chain holds the NAT hooks in the
// namespace; the anchor keeps director flows translated after tether exits
// or is killed (when its own table goes), and across a restart. tether nft
// flush removes it.
func AddNATAnchor(c *nftables.Conn, fam nftables.TableFamily) {
	t := &nftables.Table{Name: keepTableName, Family: fam}
	c.AddTable(t)
	for _, h := range []struct {
		name string
		hook *nftables.ChainHook
		prio *nftables.ChainPriority
	}{
		{"prerouting", nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest},
		{"input", nftables.ChainHookInput, nftables.ChainPriorityNATSource},
		{"output", nftables.ChainHookOutput, nftables.ChainPriorityNATDest},
		{"postrouting", nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource},
	} {
		ch := c.AddChain(&nftables.Chain{Name: h.name, Table: t, Type: nftables.ChainTypeNAT, Hooknum: h.hook, Priority: h.prio})
		if h.name == "prerouting" {
			// A ct expression holds conntrack in the namespace: the nat
			// chains alone do not, and without conntrack no NAT is undone.
			c.FlushChain(ch)
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
				&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(expr.CtStateBitNEW), Xor: u32(0)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32(0)},
				&expr.Counter{},
			}})
		}
	}
}
