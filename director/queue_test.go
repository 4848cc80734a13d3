package director

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/tetherlb/tether/testenv"
	"golang.org/x/sys/unix"
)

// nlMessage is a netlink message as a netlink library marshals it: the
// reference the queue's own encoding and parsing are checked against.
func nlMessage(t *testing.T, typ uint16, flags netlink.HeaderFlags, seq uint32, body []byte) []byte {
	t.Helper()
	b, err := netlink.Message{Header: netlink.Header{Length: uint32(unix.NLMSG_HDRLEN + len(body)), Type: netlink.HeaderType(typ), Flags: flags, Sequence: seq}, Data: body}.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func nlAttrs(t *testing.T, attrs ...netlink.Attribute) []byte {
	t.Helper()
	b, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// The queue's verdicts are byte for byte what a netlink library marshals
// for the same verdict (nfgenmsg, the verdict header, the mark), also when
// an unmarked verdict follows a marked one in the reused buffer.
func TestVerdictMessage(t *testing.T) {
	q := &queue{num: 7}
	q.initVerdict()
	for _, c := range []struct {
		id      uint32
		verdict int
		mark    uint32
		set     bool
	}{
		{1, nfAccept, 0x00230000, true},
		{0xfffffffe, nfDrop, 0, false},
		{42, nfAccept, 0, false}, // after a marked one: no mark left over
		{43, nfAccept, 0xffffffff, true},
	} {
		attrs := []netlink.Attribute{{Type: nfqaVerdictHdr, Data: append(be32(uint32(c.verdict)), be32(c.id)...)}}
		if c.set {
			attrs = append(attrs, netlink.Attribute{Type: nfqaMark, Data: be32(c.mark)})
		}
		body := append([]byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 7}, nlAttrs(t, attrs...)...)
		want := nlMessage(t, nfnlSubsysQueue<<8|nfqnlMsgVerdict, netlink.Request, 0, body)
		if got := q.verdictMessage(c.id, c.verdict, c.mark, c.set); !bytes.Equal(got, want) {
			t.Errorf("verdict %+v:\n got % x\nwant % x", c, got, want)
		}
	}
}

// A datagram of several messages: two packets (one without a mark, with
// attributes the queue does not read), a packet without a payload
// (skipped), an error answer to a verdict and the answer to the bind.
func TestDispatch(t *testing.T) {
	pkt := func(id uint32, mark *uint32, payload []byte) []byte {
		attrs := []netlink.Attribute{{Type: nfqaPacketHdr, Data: append(be32(id), 0x08, 0x00, 1)}}
		if mark != nil {
			attrs = append(attrs, netlink.Attribute{Type: nfqaMark, Data: be32(*mark)})
		}
		attrs = append(attrs, netlink.Attribute{Type: 5, Data: be32(3)}) // NFQA_IFINDEX_INDEV
		if payload != nil {
			attrs = append(attrs, netlink.Attribute{Type: nfqaPayload, Data: payload})
		}
		return nlMessage(t, nfnlSubsysQueue<<8|nfqnlMsgPacket, 0, 0, append([]byte{unix.AF_INET, 0, 0, 7}, nlAttrs(t, attrs...)...))
	}
	errMsg := func(seq uint32, errno syscall.Errno) []byte {
		body := binary.NativeEndian.AppendUint32(nil, uint32(-int32(errno)))
		return nlMessage(t, unix.NLMSG_ERROR, 0, seq, append(body, make([]byte, unix.NLMSG_HDRLEN)...))
	}
	mark := uint32(0x00230000)
	var dgram []byte
	dgram = append(dgram, pkt(5, &mark, []byte("abc"))...) // 3 bytes: the next message starts aligned
	dgram = append(dgram, pkt(6, nil, []byte("defgh"))...)
	dgram = append(dgram, pkt(7, &mark, nil)...)
	dgram = append(dgram, errMsg(0, unix.ENOENT)...)
	dgram = append(dgram, errMsg(9, 0)...)
	var got []packet
	var errs []error
	q := &queue{num: 7, handle: func(_ *queue, p packet) { got = append(got, p) }, onErr: func(err error) { errs = append(errs, err) }}
	answered, err := q.dispatch(dgram, 9)
	if !answered || err != nil || len(errs) != 1 || errs[0] != unix.ENOENT {
		t.Errorf("answered %v (%v), verdict errors %v; want the bind's answer and the verdict's ENOENT", answered, err, errs)
	}
	last := dgram[len(dgram)-len(errMsg(9, 0)):]
	busy := int32(unix.EBUSY)
	binary.NativeEndian.PutUint32(last[unix.NLMSG_HDRLEN:], uint32(-busy))
	if answered, err := q.dispatch(last, 9); !answered || err != unix.EBUSY {
		t.Errorf("an error answer to the bind: answered %v, %v", answered, err)
	}
	if len(got) != 2 || got[0].id != 5 || got[0].mark != mark || string(got[0].payload) != "abc" ||
		got[1].id != 6 || got[1].mark != 0 || string(got[1].payload) != "defgh" {
		t.Errorf("packets %+v", got)
	}
	// Parsing allocates nothing: it runs for every queued packet.
	n := 0
	q.handle, q.onErr = func(*queue, packet) { n++ }, func(error) {}
	if a := testing.AllocsPerRun(100, func() { q.dispatch(dgram, 0) }); a != 0 || n == 0 {
		t.Errorf("dispatch: %v allocations a datagram (%d packets handled)", a, n)
	}
	// A message whose length runs past the datagram ends the parse.
	bad := pkt(8, nil, []byte("x"))
	binary.NativeEndian.PutUint32(bad, uint32(len(bad)+4))
	got = nil
	q.handle = func(_ *queue, p packet) { got = append(got, p) }
	if _, err := q.dispatch(bad, 0); err != nil || got != nil {
		t.Errorf("a truncated message: %+v, %v", got, err)
	}
}

// A queue binds in a namespace with the copy mode and range asked for
// (the kernel's /proc view); a second socket cannot take the same queue
// (the director's "another program is bound to it"); Close ends the reader
// with no error.
func TestQueueBindAndClose(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Backends: 1, Label: "queue"})
	ignore := func(*queue, packet) {}
	var q *queue
	if err := env.LB.Do(func() (err error) {
		q, err = openQueue(9, 16, true, ignore, func(error) {})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var line []string
	env.LB.Do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/netfilter/nfnetlink_queue")
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 5 && f[0] == "9" {
				line = f
			}
		}
		return err
	})
	if len(line) < 5 || line[3] != strconv.Itoa(nfqnlCopyPacket) || line[4] != strconv.Itoa(copyRange) {
		t.Errorf("queue 9 in /proc/net/netfilter/nfnetlink_queue: %q, want copy mode %d and range %d", line, nfqnlCopyPacket, copyRange)
	}
	// The metrics' reader sees it too from a thread that is not the
	// process's first (it read /proc/net, which is the first thread's
	// namespace; Do moves only its own thread).
	var st []QueueStats
	for found := false; !found; {
		done := make(chan bool)
		go func() {
			runtime.LockOSThread() // dies with the goroutine when it is the first thread
			if unix.Gettid() == unix.Getpid() {
				done <- false
				return
			}
			defer runtime.UnlockOSThread()
			st = ReadQueueStats(env.LB.Do)
			done <- true
		}()
		found = <-done
	}
	if len(st) != 1 || st[0].Num != 9 {
		t.Errorf("ReadQueueStats in the namespace, off the first thread: %+v, want queue 9", st)
	}
	err := env.LB.Do(func() error {
		q2, err := openQueue(9, 16, true, ignore, func(error) {})
		if err == nil {
			q2.Close()
		}
		return err
	})
	if !errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.EPERM) {
		t.Errorf("a second bind of queue 9: %v, want EBUSY or EPERM", err)
	}
	done := make(chan error, 1)
	go func() { done <- q.run(func(error) bool { return true }) }()
	q.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the reader after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reader did not stop at Close")
	}
}

// A flow's map key keeps what tells flows apart: an IPv4 flow and the same
// addresses as IPv4-mapped IPv6 are two flows, as their FlowKeys are.
func TestFlowID(t *testing.T) {
	k := FlowKey{Proto: unix.IPPROTO_TCP, Src: netip.MustParseAddrPort("198.18.1.10:40000"), Dst: netip.MustParseAddrPort("198.18.0.10:80")}
	mapped := FlowKey{Proto: k.Proto, Src: netip.AddrPortFrom(netip.AddrFrom16(k.Src.Addr().As16()), 40000), Dst: netip.AddrPortFrom(netip.AddrFrom16(k.Dst.Addr().As16()), 80)}
	udp, port := k, k
	udp.Proto = unix.IPPROTO_UDP
	port.Dst = netip.AddrPortFrom(k.Dst.Addr(), 443)
	if k.id() != (FlowKey{Proto: k.Proto, Src: k.Src, Dst: k.Dst}).id() {
		t.Error("equal keys, different ids")
	}
	for _, other := range []FlowKey{mapped, udp, port} {
		if k.id() == other.id() {
			t.Errorf("%v and %v have one id", k, other)
		}
	}
}
