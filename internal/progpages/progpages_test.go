package progpages

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestProgramRanges(t *testing.T) {
	maps := `00400000-00ae1000 r-xp 00000000 fd:01 1234 /usr/bin/tether
00ae1000-00ce0000 r--p 006e1000 fd:01 1234 /usr/bin/tether
00ce0000-00d20000 rw-p 008e0000 fd:01 1234 /usr/bin/tether
00d20000-00d80000 rw-p 00000000 00:00 0 
01000000-01001000 r--s 00000000 fd:01 1234 /usr/bin/tether
02000000-02010000 r--p 00000000 fd:01 999 /usr/lib/other.so
03000000-03010000 r-xp 00000000 00:2e 77 /usr/bin/tether
7ffd0000-7ffd2000 r-xp 00000000 00:00 0 [vdso]
`
	got, err := programRanges([]byte(maps), "/usr/bin/tether", 0xfd, 1, 1234)
	if err != nil {
		t.Fatal(err)
	}
	// Code and read-only data by inode, the overlayfs-style line by path;
	// not the writable data, the anonymous mapping, the shared mapping,
	// another file or the vdso.
	want := []addrRange{{0x400000, 0xae1000}, {0xae1000, 0xce0000}, {0x3000000, 0x3010000}}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(addrRange{})); diff != "" {
		t.Errorf("ranges (-want +got):\n%s", diff)
	}
}

func TestProgramRangesMalformed(t *testing.T) {
	for _, tc := range []struct{ maps, want string }{
		{"00400000-00ae1000 r-xp 00000000\n", "line 1"},
		{"00400000-00ae1000 r-xp 00000000 fd:01 1234 /x\n00400000 r-xp 00000000 fd:01 1234 /x\n", `line 2: address range "00400000"`},
		{"00400000-00ae1000 r-xp 00000000 fd01 1234 /x\n", `line 1: device "fd01"`},
	} {
		_, err := programRanges([]byte(tc.maps), "/x", 0xfd, 1, 1234)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one naming %q", tc.maps, err, tc.want)
		}
	}
}

// written lives in the program's writable data (initialised, so not
// zero-filled): Drop must leave its new value alone.
var written = [4096]byte{1: 1}

func TestDrop(t *testing.T) {
	exe, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	before := rssFile(t)
	for i := range written {
		written[i] = 7
	}
	n, err := Drop()
	if err != nil {
		t.Fatal(err)
	}
	if n < int64(len(exe))/2 {
		t.Errorf("advised %d bytes of a %d-byte program, want most of it", n, len(exe))
	}
	if !bytes.Equal(written[:], bytes.Repeat([]byte{7}, len(written))) {
		t.Fatal("Drop reset writable data to the program file's contents")
	}
	if after := rssFile(t); after >= before {
		t.Errorf("file-backed resident memory %d kB before Drop, %d kB after: want less", before, after)
	}
}

func rssFile(t *testing.T) int {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}
