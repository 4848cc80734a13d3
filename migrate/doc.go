// Package migrate turns the configurations of the tools tether replaces
// into tether configurations: the rules `ipvsadm -S -n` saves (with the
// MARK rules of `iptables-save` for firewall-mark services) and the
// virtual_server blocks of keepalived.conf.
//
// What has no tether equivalent is reported, never dropped silently: a
// Result carries a Note for every line or block it could not take as it
// stands, with its line number.
package migrate
