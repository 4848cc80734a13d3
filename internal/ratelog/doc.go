// Package ratelog keeps a repeated log line from flooding the log: a line
// of one kind is written at most once an interval, and the next one that
// is written says how many were held back meanwhile. An accept loop that
// fails a thousand times a second for want of descriptors writes one line
// a second, not a thousand. It needs no privilege.
package ratelog
