package connlimit

import "testing"

// The two thresholds as IPVS keeps them: full at the upper one, not full
// again until below the lower one (or 3/4 of the upper one).
func TestThresholds(t *testing.T) {
	for _, tc := range []struct {
		name        string
		max, resume int
		// opens, then the count at which closing clears full
		clearsAt int64
	}{
		{"lower set", 4, 2, 1},
		{"lower unset: 3/4 of upper", 4, 0, 2}, // 4*2 < 3*4
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Count
			c.Set(tc.max, tc.resume)
			for i := 0; i < tc.max; i++ {
				if c.Full() {
					t.Fatalf("full at %d of %d", c.Load(), tc.max)
				}
				c.Open()
			}
			if !c.Full() {
				t.Fatalf("not full at %d", c.Load())
			}
			for c.Load() > tc.clearsAt {
				c.Close()
				if c.Load() > tc.clearsAt && !c.Full() {
					t.Fatalf("not full any more at %d, want full until %d", c.Load(), tc.clearsAt)
				}
			}
			if c.Full() {
				t.Errorf("still full at %d", c.Load())
			}
		})
	}
	var c Count
	for range 1000 {
		c.Open()
	}
	if c.Full() {
		t.Error("the zero Count has a limit")
	}
	c.Set(10, 0) // a reload lowering the limit below the count
	if !c.Full() {
		t.Error("Set below the open count did not make it full")
	}
	c.Set(0, 0)
	if c.Full() {
		t.Error("Set(0, 0) left a limit")
	}
}
