package budget

import (
	"errors"
	"strings"
	"testing"

	"github.com/tetherlb/tether/config"
)

func parse(t *testing.T, s string) *config.File {
	t.Helper()
	f, err := config.Parse("b.yaml", []byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

const two = "services:\n" +
	"  - {name: web, listen: 127.0.0.1:80, servers: [{address: 127.0.0.2:80}]}\n" +
	"  - {name: api, listen: 127.0.0.1:81, servers: [{address: 127.0.0.2:81}]}\n" +
	"  - {name: dns, protocol: udp, listen: 127.0.0.1:53, servers: [{address: 127.0.0.2:53}]}\n" +
	"  - {name: dir, mode: director, listen: 198.18.0.10:80, servers: [{address: 198.19.0.1:80}]}\n"

// At a descriptor limit of 1024, every cap a config leaves out fits
// together with the others within what is left after the reserve, and
// each service gets its own share.
func TestDeriveFitsTheLimit(t *testing.T) {
	f := parse(t, two)
	b := Of(1024)
	c, err := Derive(f, b)
	if err != nil {
		t.Fatal(err)
	}
	web, api, dns, dir := f.Services[0].Key(), f.Services[1].Key(), f.Services[2].Key(), f.Services[3].Key()
	if b.Reserve != 64 || c.Conns[web] != c.Conns[api] || c.Conns[web] < 100 || c.Conns[dir] != 0 || c.Flows[dns] != c.UDPFlows {
		t.Errorf("caps %+v at %+v: want equal TCP shares, the UDP service all the UDP flows, nothing for the director", c, b)
	}
	used := (c.Conns[web]+c.Conns[api])*PerConn + c.UDPFlows*PerFlow + c.OnePacket*PerOnePacket + c.Pipes*PerPipe
	if used > b.Clients() {
		t.Errorf("the caps use %d descriptors, the budget has %d for clients", used, b.Clients())
	}
	// The old fixed defaults (65536 flows a service, 262144 in all) were
	// past the default limit: a flood took every descriptor.
	if c.UDPFlows >= 1024 {
		t.Errorf("%d UDP flows at a limit of 1024", c.UDPFlows)
	}
}

// Explicit caps are kept, the others share what is left; explicit caps
// that cannot fit are an error naming them.
func TestDeriveExplicitCaps(t *testing.T) {
	f := parse(t, strings.Replace(two, "{name: web,", "{name: web, limits: {max_connections: 50},", 1))
	c, err := Derive(f, Of(1024))
	if err != nil {
		t.Fatal(err)
	}
	if c.Conns[f.Services[0].Key()] != 50 {
		t.Errorf("web's explicit 50 became %d", c.Conns[f.Services[0].Key()])
	}
	f = parse(t, "udp_max_flows: 100000\n"+strings.Replace(two, "{name: web,", "{name: web, limits: {max_connections: 5000},", 1))
	_, err = Derive(f, Of(1024))
	var be *Error
	if !errors.As(err, &be) || !strings.Contains(err.Error(), "services[0].limits.max_connections 5000") || !strings.Contains(err.Error(), "udp_max_flows 100000") ||
		!strings.Contains(err.Error(), "of its 1024 (RLIMIT_NOFILE") {
		t.Errorf("caps past the limit: %v", err)
	}
}
