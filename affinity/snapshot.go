package affinity

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/tetherlb/tether/internal/bounded"
)

// Snapshot file format, version 1, little endian:
//
//	header  magic "TETHRAFF" | version u16 | reserved u16 | written unix ns i64 | count u32
//	record  count × 66 bytes (see appendRecord)
//	trailer CRC-32C of everything before it, u32
//
// Fixed-size records make a truncated file detectable before anything is
// decoded, and the checksum catches the rest.
const (
	snapMagic    = "TETHRAFF"
	snapVersion  = 1
	snapHeader   = 8 + 2 + 2 + 8 + 4
	snapRecord   = 24 + 16 + 18 + 8
	snapTrailer  = 4
	snapMaxBytes = 1 << 30 // refuse to read more: no table is that large
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrSnapshot is wrapped by every error about a snapshot's content.
var ErrSnapshot = errors.New("affinity snapshot")

// RestoreStats says what a restore did with the file's templates.
type RestoreStats struct {
	Restored int // now in the table
	Expired  int // their timeout ran out, downtime counted
	Unknown  int // service or server no longer configured
	Existing int // the table already had a template for the key
}

type record struct {
	svc    Service
	client [16]byte
	server netip.AddrPort
	age    int64 // idle time at the snapshot, 0 with open connections
}

// WriteSnapshot writes every live template to w. A template with open
// connections is written as just used: it will run its full timeout after
// a restore, since its connections end with the process.
func (t *Table) WriteSnapshot(w io.Writer) error {
	r := t.reg.Load()
	now := t.nowTicks()
	// The records are encoded straight into the file's one buffer, sized
	// before any lock is taken: growing it under a shard's lock would copy
	// tens of megabytes there. The header is filled in at the end.
	n := t.Len()
	buf := make([]byte, snapHeader, snapHeader+(n+n/8+64)*snapRecord+snapTrailer)
	count := 0
	for i := range t.shards {
		sh := &t.shards[i]
		// A chunk of slots under the lock at a time, so that a snapshot of
		// a million templates pauses no lookup for long. A template moved
		// across a chunk's edge meanwhile may be missed (the next snapshot
		// has it) or written twice (restore counts it as existing).
		size := -1
		for from := 0; ; from += sweepChunk {
			sh.mu.Lock()
			if len(sh.ents) != size && size >= 0 {
				from = 0 // the array grew: its slots are all new
			}
			size = len(sh.ents)
			if from >= size {
				sh.mu.Unlock()
				break
			}
			for j := from; j < min(from+sweepChunk, size); j++ {
				e := &sh.ents[j]
				if e.empty() {
					continue
				}
				s := r.svcs[e.svc()]
				age := max(int32(e.age(now)), 0) // negative: released after now was read
				if e.active() > 0 {
					age = 0
				}
				if s.removed || uint32(age) >= s.timeout {
					continue
				}
				buf = appendRecord(buf, record{s.id, e.addr(), s.servers[e.server()], int64(age) * int64(tick)})
				count++
			}
			sh.mu.Unlock()
		}
	}
	h := append(buf[:0], snapMagic...)
	h = binary.LittleEndian.AppendUint16(h, snapVersion)
	h = binary.LittleEndian.AppendUint16(h, 0)
	h = binary.LittleEndian.AppendUint64(h, uint64(t.now().UnixNano()))
	binary.LittleEndian.AppendUint32(h, uint32(count))
	buf = binary.LittleEndian.AppendUint32(buf, crc32.Checksum(buf, crcTable))
	_, err := w.Write(buf)
	return err
}

func appendAddr(b []byte, a netip.Addr) []byte {
	fam := byte(0)
	switch {
	case a.Is4():
		fam = 4
	case a.Is6():
		fam = 6
	}
	b = append(b, fam)
	if fam == 0 {
		return append(b, make([]byte, 16)...)
	}
	a16 := a.As16()
	return append(b, a16[:]...)
}

func appendRecord(b []byte, r record) []byte {
	b = binary.LittleEndian.AppendUint32(b, r.svc.Mark)
	b = append(b, byte(r.svc.Proto))
	b = binary.LittleEndian.AppendUint16(b, r.svc.Port)
	b = appendAddr(b, r.svc.Addr) // 24 bytes so far
	b = append(b, r.client[:]...)
	s16 := r.server.Addr().As16()
	b = append(b, s16[:]...)
	b = binary.LittleEndian.AppendUint16(b, r.server.Port())
	return binary.LittleEndian.AppendUint64(b, uint64(r.age))
}

// decodeSnapshot checks and decodes a whole snapshot; it never panics and
// returns an error that says what is wrong with the file.
func decodeSnapshot(b []byte) (written time.Time, recs []record, err error) {
	fail := func(format string, a ...any) (time.Time, []record, error) {
		return time.Time{}, nil, fmt.Errorf("%w: "+format, append([]any{ErrSnapshot}, a...)...)
	}
	if len(b) < len(snapMagic) || string(b[:len(snapMagic)]) != snapMagic {
		return fail("not a tether affinity snapshot (no %q header)", snapMagic)
	}
	if len(b) < snapHeader+snapTrailer {
		return fail("truncated: %d bytes is shorter than the header", len(b))
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != snapVersion {
		return fail("version %d is not supported (this tether reads version %d)", v, snapVersion)
	}
	written = time.Unix(0, int64(binary.LittleEndian.Uint64(b[12:])))
	count := uint64(binary.LittleEndian.Uint32(b[20:]))
	want := snapHeader + count*snapRecord + snapTrailer
	if uint64(len(b)) != want {
		return fail("truncated or padded: header says %d templates (%d bytes), file has %d bytes", count, want, len(b))
	}
	body := b[:len(b)-snapTrailer]
	if sum := binary.LittleEndian.Uint32(b[len(body):]); sum != crc32.Checksum(body, crcTable) {
		return fail("checksum mismatch: the file is corrupt")
	}
	recs = make([]record, count)
	p := body[snapHeader:]
	for i := range recs {
		r := &recs[i]
		q := p[i*snapRecord : (i+1)*snapRecord]
		r.svc.Mark = binary.LittleEndian.Uint32(q)
		r.svc.Proto = Proto(q[4])
		r.svc.Port = binary.LittleEndian.Uint16(q[5:])
		a16 := [16]byte(q[8:24])
		switch q[7] {
		case 0:
		case 4:
			r.svc.Addr = netip.AddrFrom16(a16).Unmap()
		case 6:
			r.svc.Addr = netip.AddrFrom16(a16)
		default:
			return fail("template %d: address family byte %d is not 0, 4 or 6", i, q[7])
		}
		r.client = [16]byte(q[24:40])
		r.server = netip.AddrPortFrom(netip.AddrFrom16([16]byte(q[40:56])).Unmap(), binary.LittleEndian.Uint16(q[56:]))
		r.age = int64(binary.LittleEndian.Uint64(q[58:]))
		if r.age < 0 {
			return fail("template %d: negative age", i)
		}
	}
	return written, recs, nil
}

// ReadSnapshot restores templates from r into the table. Services and
// servers must be registered first; templates of others are dropped. Each
// template keeps the time it had left, less the time since the snapshot was
// written. A file that is not a complete, intact snapshot restores nothing
// and returns an error wrapping ErrSnapshot.
func (t *Table) ReadSnapshot(rd io.Reader) (RestoreStats, error) {
	b, err := io.ReadAll(io.LimitReader(rd, snapMaxBytes+1))
	if err != nil {
		return RestoreStats{}, err
	}
	if len(b) > snapMaxBytes {
		return RestoreStats{}, fmt.Errorf("%w: larger than %d bytes", ErrSnapshot, snapMaxBytes)
	}
	written, recs, err := decodeSnapshot(b)
	if err != nil {
		return RestoreStats{}, err
	}
	down := max(int64(t.now().Sub(written)), 0)
	return t.restore(recs, down), nil
}

func (t *Table) restore(recs []record, down int64) RestoreStats {
	var st RestoreStats
	r := t.reg.Load()
	now := t.nowTicks()
	type item struct {
		k      key
		server uint32
		age    uint32 // ticks
	}
	items := make([]item, 0, len(recs))
	for _, rec := range recs {
		ref, ok := r.byID[rec.svc]
		if !ok || r.svcs[ref].removed {
			st.Unknown++
			continue
		}
		s := r.svcs[ref]
		sv, ok := s.index[rec.server]
		if !ok || !s.usable(sv) {
			st.Unknown++
			continue
		}
		age := rec.age + down
		if age < 0 || age >= int64(s.timeout)*int64(tick) { // age < 0: overflow from a bogus downtime
			st.Expired++
			continue
		}
		// Re-mask: the mask may have changed since the snapshot.
		k := clientKey(ref, s.cfg.Mask, netip.AddrFrom16(rec.client))
		items = append(items, item{k, sv, uint32(age / int64(tick))})
	}
	// Oldest first, so that at the bound the freshest templates are the
	// ones kept.
	slices.SortFunc(items, func(a, b item) int { return cmp.Compare(b.age, a.age) })
	for _, it := range items {
		h, sh := t.shardOf(it.k)
		sh.mu.Lock()
		if _, ok := sh.get(it.k, h); ok {
			st.Existing++
		} else {
			sh.insert(it.k, h, it.server, now-it.age, r)
			st.Restored++
		}
		sh.mu.Unlock()
	}
	return st
}

// SaveSnapshot writes the snapshot to path atomically: to a temporary file
// in the same directory, synced, then renamed over path.
func (t *Table) SaveSnapshot(path string) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("save affinity snapshot: %w", err)
	}
	tmp := f.Name()
	w := bufio.NewWriterSize(f, 1<<16)
	err = t.WriteSnapshot(w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save affinity snapshot %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // make the rename durable; best effort
		d.Close()
	}
	return nil
}

// LoadSnapshot restores from the file at path. A missing file is not an
// error (first start): it restores nothing.
//
// The file is refused before it is read when it is not a regular file or
// is larger than a snapshot of this table's capacity can be (a snapshot
// written with a larger affinity.capacity says so: raise it to restore).
func (t *Table) LoadSnapshot(path string) (RestoreStats, error) {
	max := int64(snapHeader + t.capacity()*snapRecord + snapTrailer)
	f, _, err := bounded.Open(path, max)
	if errors.Is(err, os.ErrNotExist) {
		return RestoreStats{}, nil
	}
	if err != nil {
		return RestoreStats{}, fmt.Errorf("load affinity snapshot (at most %d templates, affinity.capacity): %w", t.capacity(), err)
	}
	defer f.Close()
	st, err := t.ReadSnapshot(f)
	if err != nil {
		return st, fmt.Errorf("load %s: %w", path, err)
	}
	return st, nil
}
