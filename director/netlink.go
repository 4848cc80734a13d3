package director

import (
	"encoding/binary"
	"errors"

	"golang.org/x/sys/unix"
)

// The netlink encoding both of the director's sockets speak: the queues'
// (queue.go) and the conntrack dump's (ctdump.go).

var errMalformed = errors.New("malformed netlink message")

// nlaTypeMask is an attribute's type without NLA_F_NESTED and
// NLA_F_NET_BYTEORDER.
const nlaTypeMask = 0x3fff

// nlMsg is one netlink message: its header's fields and its body.
type nlMsg struct {
	typ, flags uint16
	seq        uint32
	body       []byte
}

// nextMessage splits the first netlink message off b (at least a header
// long); ok false when its length does not fit b.
func nextMessage(b []byte) (m nlMsg, rest []byte, ok bool) {
	n := int(binary.NativeEndian.Uint32(b))
	if n < unix.NLMSG_HDRLEN || n > len(b) {
		return nlMsg{}, nil, false
	}
	m = nlMsg{
		typ:   binary.NativeEndian.Uint16(b[4:]),
		flags: binary.NativeEndian.Uint16(b[6:]),
		seq:   binary.NativeEndian.Uint32(b[8:]),
		body:  b[unix.NLMSG_HDRLEN:n],
	}
	return m, b[min(align4(n), len(b)):], true
}

// attrs calls fn for each netlink attribute in b: its type without the
// nested and byte-order flags, and its value.
func attrs(b []byte, fn func(t uint16, v []byte) error) error {
	for len(b) >= unix.NLA_HDRLEN {
		n := int(binary.NativeEndian.Uint16(b[0:2]))
		t := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if n < unix.NLA_HDRLEN || n > len(b) {
			return errMalformed
		}
		if err := fn(t, b[unix.NLA_HDRLEN:n]); err != nil {
			return err
		}
		b = b[min(align4(n), len(b)):]
	}
	return nil
}

// appendNlHdr appends a netlink header to the kernel; the length is
// filled in when the message is complete.
func appendNlHdr(b []byte, typ, flags uint16, seq uint32) []byte {
	b = binary.NativeEndian.AppendUint32(b, 0) // the length, when known
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	return binary.NativeEndian.AppendUint32(b, 0) // the kernel's port
}

// appendAttr appends attribute typ with value v, padded.
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(unix.NLA_HDRLEN+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// align4 is n rounded up to netlink's alignment (NLMSG_ALIGNTO and
// NLA_ALIGNTO are both 4).
func align4(n int) int { return (n + 3) &^ 3 }
