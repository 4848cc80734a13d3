// Package accesslog writes HAProxy-style access-log lines: one per ended
// connection or UDP flow, with its service, client, server, bytes each
// way, duration and how it ended. A connection that is not logged (the
// log off, or not in the sample) costs nothing beyond a zero time.
package accesslog
