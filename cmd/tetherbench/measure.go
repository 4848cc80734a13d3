package main

import (
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// dialer opens the i-th connection of worker w. Each measurement dials
// the same way for direct and for tether, so the ratios compare paths.
type dialer func(w, i int) (net.Conn, error)

// loopback dials addr from source addresses across 127.10.0.0/16, so that
// no port range runs out.
func loopback(addr string) dialer {
	return func(w, i int) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 10, byte(w), byte(i%250+1))}, Timeout: 5 * time.Second}
		return d.Dial("tcp", addr)
	}
}

func measure(dial dialer, dur time.Duration) (result, error) {
	var r result
	var err error
	if r.stream, err = throughput(dial, 1, dur); err != nil {
		return r, err
	}
	if r.streams8, err = throughput(dial, 8, dur); err != nil {
		return r, err
	}
	if r.connsPerSec, err = connRate(dial, 8, dur); err != nil {
		return r, err
	}
	r.p50, r.p99, err = latency(dial, dur)
	return r, err
}

// forWorkers runs work in n goroutines until dur passes and returns the
// events per second they counted; the first error ends the measurement.
func forWorkers(n int, dur time.Duration, work func(w int, deadline time.Time, count func(int64)) error) (float64, error) {
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	deadline := time.Now().Add(dur)
	start := time.Now()
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := work(w, deadline, func(k int64) { total.Add(k) }); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(total.Load()) / time.Since(start).Seconds(), nil
}

// throughput sends to the sink over n connections for dur: bytes/s.
func throughput(dial dialer, n int, dur time.Duration) (float64, error) {
	return forWorkers(n, dur, func(w int, deadline time.Time, count func(int64)) error {
		c, err := dial(w, 0)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		buf[0] = modeSink
		for time.Now().Before(deadline) {
			k, err := c.Write(buf)
			count(int64(k))
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// connRate opens, uses and closes connections from n clients for dur.
func connRate(dial dialer, n int, dur time.Duration) (float64, error) {
	return forWorkers(n, dur, func(w int, deadline time.Time, count func(int64)) error {
		for i := 0; time.Now().Before(deadline); i++ {
			if err := oneConn(dial, w, i); err != nil {
				return err
			}
			count(1)
		}
		return nil
	})
}

// oneConn makes worker w's i-th connection, has the backend answer a byte
// and close, and closes it.
func oneConn(dial dialer, w, i int) error {
	c, err := dial(w, i)
	if err != nil {
		return err
	}
	b := [1]byte{modeClose}
	_, err = c.Write(b[:])
	if err == nil {
		_, err = io.ReadFull(c, b[:])
	}
	c.Close()
	return err
}

// newClientRate opens, uses and closes one connection from each of n
// source addresses the balancer has not seen (fresh dials the i-th), on 8
// workers, and returns connections per second: every one a new client,
// which a persistent balancer must schedule and remember.
func newClientRate(fresh func(i int) (net.Conn, error), n int) (float64, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	start := time.Now()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				c, err := fresh(i)
				if err == nil {
					b := [1]byte{modeClose}
					if _, err = c.Write(b[:]); err == nil {
						_, err = io.ReadFull(c, b[:])
					}
					c.Close()
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// latency ping-pongs 64 bytes on one connection for dur.
func latency(dial dialer, dur time.Duration) (p50, p99 time.Duration, err error) {
	c, err := dial(0, 0)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if _, err := c.Write([]byte{modeEcho}); err != nil {
		return 0, 0, err
	}
	msg, got := make([]byte, 64), make([]byte, 64)
	return roundTrips(dur, func() error {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		_, err := io.ReadFull(c, got)
		return err
	})
}

// roundTrips times trip, one at a time, for dur: the p50 and p99.
func roundTrips(dur time.Duration, trip func() error) (p50, p99 time.Duration, err error) {
	var samples []time.Duration
	for deadline := time.Now().Add(dur); time.Now().Before(deadline); {
		t := time.Now()
		if err := trip(); err != nil {
			return 0, 0, err
		}
		samples = append(samples, time.Since(t))
	}
	slices.Sort(samples)
	return samples[len(samples)/2], samples[len(samples)*99/100], nil
}
