// Package proxyheader speaks HAProxy's PROXY protocol (v1 and v2, through
// github.com/pires/go-proxyproto): Write puts a header naming a client in
// front of a connection to a real server; Read takes one off a connection
// from a trusted balancer by peeking until it is whole and consuming
// exactly its bytes, so that what follows stays in the socket for the
// relay. It needs no privilege.
package proxyheader
