package affinity

import (
	"fmt"
	"net/netip"
	"strconv"
)

// Proto is a transport protocol, as IPPROTO numbers.
type Proto uint8

// The protocols a service can carry. ProtoAny is for firewall-mark services,
// whose mark may cover both.
const (
	ProtoAny Proto = 0
	ProtoTCP Proto = 6
	ProtoUDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return "proto" + strconv.Itoa(int(p))
}

// Service identifies a virtual service for persistence, the first half of a
// template key. It is either protocol + VIP + port (port 0: every port of the
// VIP, ipvsadm's persistent port-0 service) or a firewall mark, in which case
// the template spans every port and protocol the mark covers.
type Service struct {
	Mark  uint32
	Proto Proto
	Addr  netip.Addr
	Port  uint16
}

// AddrService is the service clients reach at proto + VIP:port.
func AddrService(p Proto, ap netip.AddrPort) Service {
	return Service{Proto: p, Addr: ap.Addr().Unmap(), Port: ap.Port()}
}

// MarkService is the service of firewall mark m.
func MarkService(m uint32) Service { return Service{Mark: m} }

func (s Service) String() string {
	if s.Mark != 0 {
		return "fwmark " + strconv.FormatUint(uint64(s.Mark), 10)
	}
	return fmt.Sprintf("%s %s", s.Proto, netip.AddrPortFrom(s.Addr, s.Port))
}
