// Package budget turns what the host allows into the bounds tether runs
// with. Its unit is the file descriptor: every connection, flow, pipe and
// one-packet datagram in flight holds some, and a process that runs out
// fails everything at once (accept, dials, the admin socket, health
// checks). Read takes the descriptor limit (raising the soft limit to the
// hard one first, as HAProxy and nginx do); Derive splits it between the
// data paths, keeping a reserve, and gives every cap a config leaves out a
// value that fits together with the others, or says which explicit caps
// cannot fit. It needs no privilege (raising the hard limit would; tether
// does not).
package budget
