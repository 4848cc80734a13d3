// Package admin is tether's admin API: JSON over HTTP on a unix socket
// (mode 0600, root only, the way the HAProxy runtime socket and the
// Docker socket are guarded) and, optionally, on a TCP address behind a
// bearer token. It lists services, servers and persistence templates,
// changes a server at once (weight, drain, down, up), removes templates
// and reloads the configuration; it also serves /metrics, /healthz and
// /readyz.
//
// The Client type is what `tether ls`, `tether affinity`, `tether server
// set` and `tether reload` use.
package admin
