package proxy

import (
	"errors"
	"sync"
)

// errStopped: the proxy has been shut down (or failed to start).
var errStopped = errors.New("proxy: stopped")

// control is the proxy's control loop. Every change to the configuration
// in force, and to the kernel state that follows it (listeners, nftables
// tables, policy routing, conntrack, a server's health and the UDP flows
// of a server that went down), runs on its one goroutine, in the proxy's
// network namespace (Options.Do). Changes are serialised by that
// goroutine rather than by a lock held across system calls; the data path
// reads what the loop publishes, through atomics and svcMu.
type control struct {
	once sync.Once
	reqs chan func()
	stop chan struct{} // closed by stopControl
	done chan struct{} // closed when the loop has returned
}

// startControl starts the loop, once.
func (p *Proxy) startControl() {
	p.ctl.once.Do(func() {
		p.ctl.reqs, p.ctl.stop, p.ctl.done = make(chan func()), make(chan struct{}), make(chan struct{})
		go p.controlLoop()
	})
}

func (p *Proxy) controlLoop() {
	defer close(p.ctl.done)
	for {
		select {
		case f := <-p.ctl.reqs:
			f()
		case <-p.ctl.stop:
			return
		}
	}
}

// stopControl ends the loop and waits for it; later changes get
// errStopped.
func (p *Proxy) stopControl() {
	p.startControl() // a loop that never ran is stopped all the same
	select {
	case <-p.ctl.stop:
	default:
		close(p.ctl.stop)
	}
	<-p.ctl.done
}

// control runs f on the control loop, in the proxy's namespace, and
// returns its error.
func (p *Proxy) control(f func() error) error {
	p.startControl()
	res := make(chan error, 1)
	select {
	case p.ctl.reqs <- func() { res <- p.inNamespace(f) }:
		return <-res
	case <-p.ctl.done:
		return errStopped
	}
}
