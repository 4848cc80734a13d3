package connlimit

import "sync/atomic"

// Count is an open-connection count with thresholds; the zero value has
// no limit. It is safe for concurrent use, and the thresholds may change
// (a reload) while connections open and close.
type Count struct {
	n, max, resume atomic.Int64
	full           atomic.Bool
}

// Set sets the upper threshold (0: none) and the lower one (0: 3/4 of
// the upper), and whether the count is full by them now.
func (c *Count) Set(max, resume int) {
	c.max.Store(int64(max))
	c.resume.Store(int64(resume))
	c.full.Store(max > 0 && c.n.Load() >= int64(max))
}

// Open counts a new connection; at the upper threshold the count is full.
func (c *Count) Open() {
	if n, m := c.n.Add(1), c.max.Load(); m > 0 && n >= m {
		c.full.Store(true)
	}
}

// Close uncounts a connection; below the lower threshold a full count
// takes connections again.
func (c *Count) Close() {
	n := c.n.Add(-1)
	if lo := c.resume.Load(); lo > 0 && n < lo || lo == 0 && 4*n < 3*c.max.Load() {
		c.full.Store(false)
	}
}

// Full says no new client should come: the upper threshold was reached and
// the count has not yet fallen below the lower one.
func (c *Count) Full() bool { return c.full.Load() }

// Load is the number of open connections.
func (c *Count) Load() int64 { return c.n.Load() }
