// Package progpages gives back to the kernel the pages of tether's own
// program that starting it touched. A Go binary's package initialisers are
// spread over its text, and the kernel maps 64 KB of an already cached file
// around each page fault, so by the time tether serves, most of its 15 MB
// program is resident although a connection runs through a fraction of it.
// Drop advises the kernel that the program's read-only mappings (code,
// read-only data, the function tables) are not needed: the pages stay in
// the page cache, and the ones still in use come back on their next touch
// as minor faults. Writable mappings are never touched, so no variable
// loses its value. The kernel may reclaim these clean pages at any time
// anyway; Drop only asks for it now. A page that comes back comes from
// the program tether was started from: an install by rename (a hot
// upgrade's) leaves that file as it was, and the kernel refuses to write
// over a running program in place (ETXTBSY). It needs no privilege.
package progpages
