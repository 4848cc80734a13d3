// Package nft renders tether's firewall-mark classes into one nftables
// table of tether's own (inet tether) and applies it in one batch with
// github.com/google/nftables; no nft binary is needed at run time. Show
// renders the same ruleset in nft syntax, so an admin can read what tether
// applies (and tests load that text with nft to cross-check).
//
// The table restores the conntrack mark of established flows, marks new
// flows by class (named interval sets of addresses and ports), saves the
// mark into the conntrack mark, and TPROXYs marked TCP and UDP flows to
// tether's transparent listeners. Only the mark bits in the mark mask are touched.
//
// Applying needs CAP_NET_ADMIN in the network namespace.
package nft
