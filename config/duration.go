package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written as Go writes one ("300s", "5m") or as
// a whole number of seconds (300), the way ipvsadm and keepalived write
// timeouts.
type Duration time.Duration

// maxSeconds is the most whole seconds a time.Duration holds.
const maxSeconds = math.MaxInt64 / int64(time.Second)

// UnmarshalYAML accepts "300s" or 300.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration such as 300s or 300, got a %s", n.Line, kindName(n.Kind))
	}
	if secs, err := strconv.ParseInt(n.Value, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		if err != nil || secs > maxSeconds || secs < -maxSeconds {
			return fmt.Errorf("line %d: %s seconds is out of range (at most %d, about 292 years)", n.Line, n.Value, int64(maxSeconds))
		}
		*d = Duration(time.Duration(secs) * time.Second)
		return nil
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (want e.g. 300s, 5m or 300)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the Go form.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D is the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	}
	return "value"
}
