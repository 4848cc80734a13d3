// Package bounded opens files whose size tether bounds before it reads
// them: the config file and the persistence snapshot. A FIFO, a device
// (/dev/zero) or a directory is refused with a message that says so, and a
// regular file larger than the bound is refused before a byte is read, so
// a wrong path can neither block tether nor make it read without end.
// It needs no privilege.
package bounded
