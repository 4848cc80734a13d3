package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"
)

// benchUDP is the loopback UDP table: direct, tether, and nginx stream
// when it is installed (HAProxy 2.6 relays no UDP), each row measured
// through all of them in turn.
func benchUDP(ctx context.Context, dir, echo, udpListen, tcpListen string, dur time.Duration) error {
	nginx, stop, err := startNginxUDP(ctx, dir, echo)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tetherbench: no nginx column in the UDP table:", err)
		fmt.Printf("| UDP, 8 clients | direct | tether |\n|---|---|---|\n")
	} else {
		defer stop()
		fmt.Printf("| UDP, 8 clients | direct | tether | nginx stream | tether/nginx |\n|---|---|---|---|---|\n")
	}
	for _, m := range []struct {
		name         string
		size, window int
	}{{"request/response, 64 B", 64, 1}, {"request/response, 1400 B", 1400, 1}, {"16 in flight, 64 B", 64, 16}, {"16 in flight, 1400 B", 1400, 16}} {
		d, err := udpRate(echo, m.size, m.window, 8, dur)
		if err != nil {
			return fmt.Errorf("udp direct: %w", err)
		}
		t, err := udpRate(udpListen, m.size, m.window, 8, dur)
		if err != nil {
			return fmt.Errorf("udp through tether: %w", err)
		}
		fmt.Printf("| datagrams/s, %s | %.0f | %.0f (%.2fx) |", m.name, d, t, t/d)
		if nginx != "" {
			n, err := udpRate(nginx, m.size, m.window, 8, dur)
			if err != nil {
				return fmt.Errorf("udp through nginx: %w", err)
			}
			fmt.Printf(" %.0f (%.2fx) | %.2fx |", n, n/d, t/n)
		}
		fmt.Println()
	}
	fmt.Println()
	// The same tether's TCP loops busy meanwhile: whether UDP, which
	// they do not serve, still gets a processor.
	ip50, ip99, err := udpLatency(udpListen, dur)
	if err != nil {
		return fmt.Errorf("udp latency through tether: %w", err)
	}
	var rate float64
	var rerr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		rate, rerr = connRate(loopback(tcpListen), 8, dur)
	}()
	lp50, lp99, err := udpLatency(udpListen, dur)
	<-done
	if err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("udp latency under tcp load: %w", err)
	}
	fmt.Printf("UDP ping-pong through tether, one client, 64 B: p50 %v, p99 %v; while 8 clients open TCP connections through tether's TCP service (%.0f/s): p50 %v, p99 %v\n\n",
		ip50.Round(time.Microsecond), ip99.Round(time.Microsecond), rate, lp50.Round(time.Microsecond), lp99.Round(time.Microsecond))
	return nil
}

// udpLatency ping-pongs 64 B datagrams from one client through addr for
// dur: the p50 and p99 round trips. A lost datagram fails the run.
func udpLatency(addr string, dur time.Duration) (p50, p99 time.Duration, err error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	msg, got := make([]byte, 64), make([]byte, 64<<10)
	return roundTrips(dur, func() error {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		_, err := c.Read(got)
		return err
	})
}

func serveUDPEcho(c *net.UDPConn) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		c.WriteToUDPAddrPort(buf[:n], from)
	}
}

func freeUDPAddr() (string, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.LocalAddr().String(), nil
}

// udpRate counts datagrams (requests and replies) per second over clients
// that each send window datagrams of size bytes and wait for their echoes,
// for dur: window 1 is request/response, more is a pipelined stream, where
// batched reads and writes pay. A lost datagram costs its client a 100 ms
// wait, not the run.
func udpRate(addr string, size, window, clients int, dur time.Duration) (float64, error) {
	return forWorkers(clients, dur, func(w int, deadline time.Time, count func(int64)) error {
		d := net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 11, 0, byte(w+1))}}
		c, err := d.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		msg, got := make([]byte, size), make([]byte, 64<<10)
		for time.Now().Before(deadline) {
			for range window {
				if _, err := c.Write(msg); err != nil {
					return err
				}
			}
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			for range window {
				if _, err := c.Read(got); err != nil {
					break
				}
				count(2)
			}
		}
		return nil
	})
}
