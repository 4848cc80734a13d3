// Package director is the NFQUEUE data path's userspace half: it binds
// the queues (queue.go: nfnetlink_queue on a netlink socket of its own,
// without a library), parses each queued packet's
// flow, asks the decision function it is given which server the new flow
// goes to, answers with that server's choice mark, and scans conntrack's
// table (conntrack.go, ctdump.go: a dump on a netlink socket of its own,
// once a second) to give back what each flow held when the flow closes or
// the kernel forgets it. The kernel's nat chain does the rest.
//
// KernelTemplates and Mirror (kmap.go, mirror.go) keep the kernel template
// maps of the director tables equal to the persistence table, from its
// journal, so that a returning client's flows never reach the queue; a
// flow the kernel sent that way is adopted by the next scan.
//
// It knows nothing of services, templates or schedulers: the decision and
// the release are funcs of its Options. Binding queues and following
// conntrack need CAP_NET_ADMIN in the network namespace.
package director
