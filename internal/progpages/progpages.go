package progpages

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxMappings bounds the lines of /proc/self/maps Drop reads: a Go
// program has a few dozen mappings.
const maxMappings = 100000

// Drop advises the kernel that the running program's read-only file
// mappings are not needed (MADV_DONTNEED) and returns how many bytes of
// mappings it advised.
func Drop() (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		return 0, fmt.Errorf("progpages: %w", err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, fmt.Errorf("progpages: %w", err)
	}
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("progpages: %w", err)
	}
	ranges, err := programRanges(maps, exe, unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, r := range ranges {
		// A raw system call: the range is the program's own code, which
		// no Go slice may point at.
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, uintptr(r.start), uintptr(r.end-r.start), unix.MADV_DONTNEED); e != 0 {
			return total, fmt.Errorf("progpages: madvise %#x-%#x: %w", r.start, r.end, syscall.Errno(e))
		}
		total += int64(r.end - r.start)
	}
	return total, nil
}

type addrRange struct{ start, end uint64 }

// programRanges picks from /proc/self/maps the private mappings of the
// program that no one may write: its code and read-only data. A mapping
// is the program's if it has the program's device and inode, or its path:
// before Linux 6.8 a file on overlayfs (a container's) shows the inode of
// the layer below, and a program replaced on disk keeps its inode but
// gains " (deleted)" in both places.
func programRanges(maps []byte, exe string, major, minor uint32, ino uint64) ([]addrRange, error) {
	var out []addrRange
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for n := 1; sc.Scan(); n++ {
		if n > maxMappings {
			return nil, fmt.Errorf("progpages: more than %d mappings", maxMappings)
		}
		// address perms offset dev inode [path]
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			return nil, fmt.Errorf("progpages: /proc/self/maps line %d: %q: want at least 5 fields", n, sc.Text())
		}
		if perms := f[1]; len(perms) != 4 || perms[1] != '-' || perms[3] != 'p' {
			continue // writable or shared: never
		}
		maj, min, ok := strings.Cut(f[3], ":")
		ma, err1 := strconv.ParseUint(maj, 16, 32)
		mi, err2 := strconv.ParseUint(min, 16, 32)
		i, err3 := strconv.ParseUint(f[4], 10, 64)
		if !ok || err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("progpages: /proc/self/maps line %d: device %q inode %q", n, f[3], f[4])
		}
		same := uint32(ma) == major && uint32(mi) == minor && i == ino
		if !same && (len(f) < 6 || strings.Join(f[5:], " ") != exe) {
			continue
		}
		a, b, ok := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(a, 16, 64)
		end, err2 := strconv.ParseUint(b, 16, 64)
		if !ok || err1 != nil || err2 != nil || end <= start {
			return nil, fmt.Errorf("progpages: /proc/self/maps line %d: address range %q", n, f[0])
		}
		out = append(out, addrRange{start, end})
	}
	return out, sc.Err()
}
