// Package api holds the admin API's wire types: what `tether ls`,
// `tether affinity` and `tether server set` send and receive as JSON.
// Both ends import it (package admin serves and calls it, package proxy
// fills it), so neither the client nor the server links the data path
// for the other's sake. It needs no privilege and has no behaviour
// beyond checking a request's own fields.
package api
