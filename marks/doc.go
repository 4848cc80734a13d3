// Package marks describes firewall-mark classes: which packets get which
// mark. A class is a mark plus the protocols, destination addresses and
// destination ports it covers; the mark is a virtual service, so one
// client's connections to every port of the class share one persistence
// template (FTP's control port and passive range; HTTP and HTTPS).
//
// The package only describes and validates; package nft renders the
// classes into nftables rules. It needs no privilege.
package marks
