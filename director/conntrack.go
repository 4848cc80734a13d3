package director

import (
	"errors"
	"net/netip"
	"time"

	"github.com/ti-mo/conntrack"
)

// reconcileEvery is how often the director compares its open flows with
// conntrack's, to give back what flows whose end it did not hear of held
// (a first packet dropped after the verdict, lost events).
const reconcileEvery = 60 * time.Second

// reconcileGrace keeps a flow younger than this out of reconciliation: its
// conntrack entry may not be confirmed yet.
const reconcileGrace = 10 * time.Second

// followConntrack releases flows as they close or conntrack destroys them, and
// reconciles with conntrack's table every reconcileEvery and after lost
// events.
func (d *Director[H]) followConntrack() {
	defer d.wg.Done()
	tick := time.NewTicker(reconcileEvery)
	defer tick.Stop()
	for d.ctx.Err() == nil {
		err := d.listenEvents(tick.C)
		if d.ctx.Err() != nil {
			return
		}
		d.stats.overruns.Add(1)
		d.log.Warn("director: conntrack events lost; reconciling open flows with conntrack", "err", err)
		d.reconcile()
		select {
		case <-d.ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// listenEvents follows conntrack's events (ctevents.go: closes, destroys,
// and new flows when the director adopts them) until the director stops (nil) or the listener
// fails (lost events among them).
func (d *Director[H]) listenEvents(tick <-chan time.Time) error {
	ev, err := dialCTEvents(d.do, d.o.Adopt != nil)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		errc <- ev.run(func(kind ctEventKind, k FlowKey, mark uint32) {
			if kind == ctNew {
				d.adopt(k, mark)
			} else { // closed or destroyed: the flow holds its choice no longer
				d.destroyed(k)
			}
		})
	}()
	for {
		select {
		case <-tick:
			d.reconcile()
		case err := <-errc:
			ev.Close()
			if err == nil {
				err = errors.New("conntrack events: the socket closed")
			}
			return err
		case <-d.ctx.Done():
			ev.Close()
			<-errc // the reader has returned
			return nil
		}
	}
}

func tupleKey(t conntrack.Tuple) FlowKey {
	return FlowKey{Proto: t.Proto.Protocol,
		Src: netip.AddrPortFrom(t.IP.SourceAddress.Unmap(), t.Proto.SourcePort),
		Dst: netip.AddrPortFrom(t.IP.DestinationAddress.Unmap(), t.Proto.DestinationPort)}
}

// adopt keeps a new flow k that the kernel gave choice mark without the
// queue, unless the director decided it itself.
func (d *Director[H]) adopt(k FlowKey, mark uint32) {
	d.mu.Lock()
	f := d.flows[k]
	d.mu.Unlock()
	if f != nil || mark == 0 {
		return
	}
	hold, ok := d.o.Adopt(k, mark)
	if !ok {
		return
	}
	d.mu.Lock()
	if d.flows[k] != nil { // cannot happen: events of one flow come in order
		d.mu.Unlock()
		d.o.Release(hold)
		return
	}
	d.flows[k] = &flow[H]{mark: mark, born: time.Now(), hold: hold}
	d.mu.Unlock()
	d.stats.adopted.Add(1)
}

// destroyed ends flow k, which conntrack forgot.
func (d *Director[H]) destroyed(k FlowKey) {
	d.mu.Lock()
	f := d.flows[k]
	delete(d.flows, k)
	d.mu.Unlock()
	if f != nil {
		d.stats.ended.Add(1)
		d.o.Release(f.hold)
	}
}

// reconcile ends the flows conntrack no longer has.
func (d *Director[H]) reconcile() {
	var live []conntrack.Flow
	err := d.do(func() error {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		live, err = c.Dump(nil)
		return err
	})
	if err != nil {
		d.log.Warn("director: conntrack dump failed; open flows not reconciled", "err", err)
		return
	}
	have := make(map[FlowKey]bool, len(live))
	for _, f := range live {
		have[tupleKey(f.TupleOrig)] = true
	}
	var gone []*flow[H]
	cutoff := time.Now().Add(-reconcileGrace)
	d.mu.Lock()
	for k, f := range d.flows {
		if !have[k] && f.born.Before(cutoff) {
			delete(d.flows, k)
			gone = append(gone, f)
		}
	}
	d.mu.Unlock()
	for _, f := range gone {
		d.o.Release(f.hold)
	}
	d.stats.reconciled.Add(uint64(len(gone)))
}

// ResetMarks deletes the conntrack entries of flows with the given marks
// (IPVS's expire_nodest_conn): their clients' next packets start new
// flows. do runs it in the right network namespace (nil: as is).
func ResetMarks(do func(func() error) error, marks []uint32) error {
	if len(marks) == 0 {
		return nil
	}
	f := func() error {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		for _, m := range marks {
			if err := c.FlushFilter(conntrack.NewFilter().Mark(m)); err != nil {
				return err
			}
		}
		return nil
	}
	if do != nil {
		return do(f)
	}
	return f()
}
