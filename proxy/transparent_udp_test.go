package proxy

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The control data of a TPROXYed datagram: its original destination and
// its mark.
func TestOrigDstAndMark(t *testing.T) {
	sa := make([]byte, 16) // sockaddr_in
	binary.BigEndian.PutUint16(sa[2:], 443)
	copy(sa[4:8], []byte{198, 18, 0, 10})
	mark := make([]byte, 4)
	binary.NativeEndian.PutUint32(mark, 0x443)
	oob := append(cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sa), cmsg(unix.SOL_SOCKET, unix.SO_MARK, mark)...)
	dst, m, ok := origDst(oob)
	if !ok || dst != netip.MustParseAddrPort("198.18.0.10:443") || m != 0x443 {
		t.Errorf("origDst = %v, %#x, %v", dst, m, ok)
	}
	if _, _, ok := origDst(cmsg(unix.SOL_SOCKET, unix.SO_MARK, mark)); ok {
		t.Error("no destination, but ok")
	}
}

func cmsg(level, typ int, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}
