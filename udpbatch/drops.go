package udpbatch

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// skMeminfoDrops and skMeminfoVars are SK_MEMINFO_DROPS and
// SK_MEMINFO_VARS of linux/sock_diag.h: SO_MEMINFO's array and the place
// of the socket's drop count in it.
const (
	skMeminfoDrops = 8
	skMeminfoVars  = 9
)

// Drops is how many datagrams the kernel dropped on the socket since it
// was made (a full receive buffer, mostly): what a UDP service lost
// before tether could read it.
func Drops(rc syscall.RawConn) (uint64, error) {
	var info [skMeminfoVars]uint32
	var serr error
	err := rc.Control(func(fd uintptr) {
		l := uint32(unsafe.Sizeof(info))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO, uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
		}
	})
	if err == nil {
		err = serr
	}
	return uint64(info[skMeminfoDrops]), err
}
