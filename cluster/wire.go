package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/tetherlb/tether/affinity"
)

// Wire format, version 1, big endian. Every message starts with
//
//	version u8 | kind u8 | sender u32 (the sending instance's id: CRC-32C of its name)
//
// and a kind's body follows:
//
//	templates   count u16 | count × record
//	invalidate  nonce u64 | at unix ms i64 | fields u8 (1 service, 2 client, 4 server) | [service] | [addr] | [addr port]
//	state       complete u8 | count u32 | count × record
//
//	record      service | client addr | server addr | server port u16 | busy u8 | left ms u32
//	service     mark u32 | proto u8 | addr | port u16
//	addr        length u8 (0, 4 or 16) | that many bytes
//
// A template record is a template as its sender holds it: busy while the
// sender has connections open through it, else the time it has left.
const (
	wireVersion = 1

	kindTemplates  = 1
	kindInvalidate = 2
	kindState      = 3

	headerLen = 6
	// maxRecord is the longest record: two IPv6 services' worth of room.
	maxRecord = 4 + 1 + 17 + 2 + 17 + 17 + 2 + 1 + 4
)

// errWire is wrapped by every error about a message's content.
var errWire = errors.New("cluster message")

// record is one template on the wire.
type record struct {
	svc    affinity.Service
	client netip.Addr
	server netip.AddrPort
	busy   bool
	left   time.Duration
}

func appendHeader(b []byte, kind byte, sender uint32) []byte {
	return binary.BigEndian.AppendUint32(append(b, wireVersion, kind), sender)
}

func appendAddr(b []byte, a netip.Addr) []byte {
	switch {
	case !a.IsValid():
		return append(b, 0)
	case a.Unmap().Is4():
		v := a.Unmap().As4()
		return append(append(b, 4), v[:]...)
	}
	v := a.As16()
	return append(append(b, 16), v[:]...)
}

func appendService(b []byte, s affinity.Service) []byte {
	b = binary.BigEndian.AppendUint32(b, s.Mark)
	b = appendAddr(append(b, byte(s.Proto)), s.Addr)
	return binary.BigEndian.AppendUint16(b, s.Port)
}

func appendRecord(b []byte, r record) []byte {
	b = appendAddr(appendService(b, r.svc), r.client)
	b = binary.BigEndian.AppendUint16(appendAddr(b, r.server.Addr()), r.server.Port())
	busy := byte(0)
	if r.busy {
		busy = 1
	}
	left := min(max(r.left.Milliseconds(), 0), 1<<32-1)
	return binary.BigEndian.AppendUint32(append(b, busy), uint32(left))
}

// reader decodes a message, remembering the first error with where it was.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s at byte %d of %d", errWire, what, r.off, len(r.b))
	}
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b)-r.off {
		r.fail("truncated " + what)
		return nil
	}
	v := r.b[r.off : r.off+n]
	r.off += n
	return v
}

func (r *reader) u8(what string) byte {
	if v := r.take(1, what); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u16(what string) uint16 {
	if v := r.take(2, what); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u32(what string) uint32 {
	if v := r.take(4, what); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) addr(what string, optional bool) netip.Addr {
	switch n := r.u8(what + " length"); {
	case r.err != nil:
	case n == 0 && optional:
	case n == 4:
		if v := r.take(4, what); v != nil {
			return netip.AddrFrom4([4]byte(v))
		}
	case n == 16:
		if v := r.take(16, what); v != nil {
			return netip.AddrFrom16([16]byte(v)).Unmap()
		}
	default:
		r.off--
		r.fail(fmt.Sprintf("%s length %d (want 4 or 16)", what, n))
	}
	return netip.Addr{}
}

func (r *reader) service() affinity.Service {
	s := affinity.Service{Mark: r.u32("service mark"), Proto: affinity.Proto(r.u8("service protocol"))}
	s.Addr = r.addr("service address", true)
	s.Port = r.u16("service port")
	if r.err == nil {
		switch {
		case s.Mark == 0 && !s.Addr.IsValid():
			r.fail("service with neither mark nor address")
		case s.Mark != 0 && (s.Addr.IsValid() || s.Port != 0 || s.Proto != affinity.ProtoAny):
			r.fail("mark service with an address")
		case s.Mark == 0 && s.Proto != affinity.ProtoTCP && s.Proto != affinity.ProtoUDP:
			r.fail(fmt.Sprintf("service protocol %d", s.Proto))
		}
	}
	return s
}

func (r *reader) record() record {
	var rec record
	rec.svc = r.service()
	rec.client = r.addr("client", false)
	srv := r.addr("server", false)
	rec.server = netip.AddrPortFrom(srv, r.u16("server port"))
	rec.busy, rec.left = r.busyLeft()
	if r.err == nil && rec.server.Port() == 0 {
		r.fail("server port 0")
	}
	return rec
}

// busyLeft reads a record's busy flag and time left.
func (r *reader) busyLeft() (busy bool, left time.Duration) {
	switch b := r.u8("busy flag"); {
	case r.err != nil:
	case b > 1:
		r.off--
		r.fail(fmt.Sprintf("busy flag %d", b))
	default:
		busy = b == 1
	}
	return busy, time.Duration(r.u32("time left")) * time.Millisecond
}

// header reads a message's header.
func (r *reader) header() (kind byte, sender uint32) {
	if v := r.u8("version"); r.err == nil && v != wireVersion {
		r.off--
		r.fail(fmt.Sprintf("version %d (this tether speaks %d)", v, wireVersion))
	}
	kind = r.u8("kind")
	sender = r.u32("sender")
	return kind, sender
}

// end fails a message with bytes after its end.
func (r *reader) end() {
	if r.err == nil && r.off != len(r.b) {
		r.fail(fmt.Sprintf("%d bytes after the message", len(r.b)-r.off))
	}
}

// invalidation is an invalidate message: the affinity.Filter to apply,
// and a nonce that tells two alike apart (relays recognise one by it).
type invalidation struct {
	nonce  uint64
	at     time.Time // when it was made: templates used since are spared
	svc    *affinity.Service
	client netip.Addr
	server netip.AddrPort
}

func appendInvalidation(b []byte, inv invalidation) []byte {
	var fields byte
	if inv.svc != nil {
		fields |= 1
	}
	if inv.client.IsValid() {
		fields |= 2
	}
	if inv.server.IsValid() {
		fields |= 4
	}
	b = binary.BigEndian.AppendUint64(b, inv.nonce)
	b = append(binary.BigEndian.AppendUint64(b, uint64(inv.at.UnixMilli())), fields)
	if inv.svc != nil {
		b = appendService(b, *inv.svc)
	}
	if inv.client.IsValid() {
		b = appendAddr(b, inv.client)
	}
	if inv.server.IsValid() {
		b = binary.BigEndian.AppendUint16(appendAddr(b, inv.server.Addr()), inv.server.Port())
	}
	return b
}

func (r *reader) invalidation() invalidation {
	var inv invalidation
	if v := r.take(8, "nonce"); v != nil {
		inv.nonce = binary.BigEndian.Uint64(v)
	}
	if v := r.take(8, "time"); v != nil {
		inv.at = time.UnixMilli(int64(binary.BigEndian.Uint64(v)))
	}
	fields := r.u8("invalidation fields")
	if fields&^7 != 0 {
		r.off--
		r.fail(fmt.Sprintf("invalidation fields %#x", fields))
		return inv
	}
	if fields&1 != 0 {
		s := r.service()
		inv.svc = &s
	}
	if fields&2 != 0 {
		inv.client = r.addr("client", false)
	}
	if fields&4 != 0 {
		a := r.addr("server", false)
		inv.server = netip.AddrPortFrom(a, r.u16("server port"))
	}
	return inv
}

func (inv invalidation) filter() affinity.Filter {
	return affinity.Filter{Service: inv.svc, Client: inv.client, Server: inv.server, UsedBefore: inv.at}
}
