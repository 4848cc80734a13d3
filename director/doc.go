// Package director is the NFQUEUE data path's userspace half: it binds
// the queues (github.com/florianl/go-nfqueue), parses each queued packet's
// flow, asks the decision function it is given which server the new flow
// goes to, answers with that server's choice mark, and follows conntrack
// (destroy events, and a periodic dump) to give back what each flow held
// when the kernel forgets it. The kernel's nat chain does the rest.
//
// It knows nothing of services, templates or schedulers: the decision and
// the release are funcs of its Options. Binding queues and following
// conntrack need CAP_NET_ADMIN in the network namespace.
package director
