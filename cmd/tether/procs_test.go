package main

import (
	"testing"

	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/marks"
)

// A config whose data path the TCP event loops do not all serve gets a
// processor more than loops; one they serve whole gets one a loop; with
// the loops off the number is left alone.
func TestProcsFor(t *testing.T) {
	tcp := config.Service{Protocol: config.TCP, Mode: config.ModeProxy}
	for _, c := range []struct {
		name  string
		cfg   config.File
		loops int
		want  int
	}{
		{"tcp services", config.File{Services: []config.Service{tcp, tcp}}, 2, 2},
		{"a udp service (read on the loops)", config.File{Services: []config.Service{tcp, {Protocol: config.UDP, Mode: config.ModeProxy}}}, 2, 2},
		{"a one-packet udp service", config.File{Services: []config.Service{tcp, {Protocol: config.UDP, Mode: config.ModeProxy, OnePacket: true}}}, 2, 3},
		{"a director service", config.File{Services: []config.Service{tcp, {Protocol: config.TCP, Mode: config.ModeDirector}}}, 4, 5},
		{"director mode for the file", config.File{Mode: config.ModeDirector, Services: []config.Service{{Protocol: config.TCP}}}, 2, 3},
		{"a mark class with udp (read on the loops)", config.File{Services: []config.Service{tcp}, MarkSet: marks.Set{Classes: []marks.Class{{Protocols: marks.Both}}}}, 2, 2},
		{"a mark class with tcp", config.File{Services: []config.Service{tcp}, MarkSet: marks.Set{Classes: []marks.Class{{Protocols: marks.TCP}}}}, 2, 2},
		{"loops off", config.File{Services: []config.Service{{Protocol: config.UDP}}}, -1, 0},
	} {
		if got := procsFor(&c.cfg, c.loops); got != c.want {
			t.Errorf("%s, %d loops: %d processors, want %d", c.name, c.loops, got, c.want)
		}
	}
}
