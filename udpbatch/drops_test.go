package udpbatch

import (
	"net"
	"testing"
)

// A socket nobody reads, with a small receive buffer, drops what does not
// fit; Drops reads the kernel's count.
func TestDrops(t *testing.T) {
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	rx.SetReadBuffer(4096)
	rc, err := rx.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if n, err := Drops(rc); err != nil || n != 0 {
		t.Fatalf("a new socket: %d drops, %v", n, err)
	}
	tx, err := net.DialUDP("udp4", nil, rx.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	for range 500 {
		tx.Write(make([]byte, 512))
	}
	n, err := Drops(rc)
	if err != nil || n == 0 {
		t.Fatalf("500 datagrams into a 4 KiB buffer nobody reads: %d drops, %v", n, err)
	}
	t.Logf("%d of 500 dropped", n)
}
