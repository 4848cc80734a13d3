// Package lruset is a bounded set with least-recently-used eviction
// (golang-lru's simplelru under a lock), for UDP flows, the stand-in for
// connections: at the bound the least recently used goes, so a flood of
// spoofed sources cannot grow memory. What it pushes out is handed back to
// the caller, to be closed after the lock is released: a socket close or a
// template release never runs under its lock. It needs no privilege.
package lruset
