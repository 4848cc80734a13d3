// Package health runs the health checks of real servers: tcp (a connect),
// http and https (a GET whose status, body and digest are checked), smtp
// (a greeting and HELO), dns (a query that must be answered), udp (a
// datagram that must be answered) and exec (a command that must exit 0).
//
// A Monitor runs one goroutine per checked server and applies rise and
// fall the way keepalived and HAProxy do: a server that is up goes down
// after fall failures in a row, one that is down comes up after rise
// successes in a row; a single flap changes nothing. It reports each
// change once, to a callback; what a change does to scheduling and to the
// persistence templates is the proxy's business.
//
// Hooks (hooks.go) run the commands a config names for events, a
// service's quorum_up and quorum_down: in order per service, bounded in
// backlog and time.
package health
