// Package acceptloop accepts on a listener until it is closed, and backs
// off on errors as net/http does (5 ms doubling to 1 s): a host short of
// descriptors (EMFILE, ENFILE) or buffers is not spun on. It needs no
// privilege.
package acceptloop
