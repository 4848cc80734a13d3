// Package nft renders tether's tables and applies each in one batch with
// github.com/google/nftables; no nft binary is needed at run time. Show
// renders the same tables in nft syntax, so an admin can read what tether
// applies (and tests load that text with nft to cross-check).
//
//   - ruleset.go: table inet tether for firewall-mark services. It restores
//     the conntrack mark of established flows, marks new flows by class
//     (named interval sets of addresses and ports), saves the mark into
//     the conntrack mark, and TPROXYs marked TCP and UDP flows to tether's
//     transparent listeners. Only the mark bits in the mark mask are
//     touched.
//   - director.go, director_show.go, queue.go: tables ip/ip6 tether of the
//     director (queue new flows, DNAT by choice mark, the fail-open
//     fallback), the probe for nft's queue statement, the NAT anchor.
//   - templates.go: the director's kernel template maps (masked client to
//     choice mark, element timeouts) and their writes; acl.go and
//     markacl.go: services' access lists as drop (and TCP reset) rules.
//   - plan.go: from a config to director tables: choice marks stable
//     across reloads, the tables `tether nft show` prints.
//
// Applying needs CAP_NET_ADMIN in the network namespace.
package nft
