// Command tetherbench measures tether against a direct connection, in one
// run: on loopback (the socket proxy, and HAProxy when installed; for UDP,
// nginx stream when installed, as HAProxy 2.6 relays no UDP), then in
// network namespaces (the director, a static kernel DNAT rule, the socket
// proxy and mark services, and HAProxy and nginx stream when installed,
// against the kernel forwarding straight to the server):
// single-stream and 8-stream throughput, new connections per second,
// request/response latency, and tether's peak RSS. It prints every figure
// with its ratio to direct, so the numbers mean the same on any machine.
//
//	go run ./cmd/tetherbench [-duration 3s]
//
// It builds tether, runs it as a child process on an embedded
// configuration, and removes everything it started when it ends.
package main
