package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Visit is one connection of a client run: from Src to the target's Port,
// served by Backend (the name it answered with), or failed with Err.
type Visit struct {
	Src     netip.Addr
	Port    int
	Backend string
	Err     error
}

// Drive connects from every source address of the host to each port of
// target, rounds times, in order (round by round, port by port), and
// reads the name the backend answers with. Sources run in parallel, at
// most 16 at a time; they are the host's addresses of target's family.
func (h *Host) Drive(ctx context.Context, target netip.Addr, ports []int, rounds int) []Visit {
	var mu sync.Mutex
	var out []Visit
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	srcs := h.Addrs
	if target.Is6() {
		srcs = h.Addrs6
	}
	for _, src := range srcs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var mine []Visit
			for range rounds {
				for _, port := range ports {
					name, err := h.ask(ctx, src, netip.AddrPortFrom(target, uint16(port)))
					mine = append(mine, Visit{Src: src, Port: port, Backend: name, Err: err})
				}
			}
			mu.Lock()
			out = append(out, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func (h *Host) ask(ctx context.Context, src netip.Addr, to netip.AddrPort) (string, error) {
	e, err := h.DialEcho(ctx, src, to)
	if err != nil {
		return "", err
	}
	e.Close()
	return e.Name, nil
}

// Echo is a connection to a ServeName server: Name is the host that
// answered, and Say checks that the connection still carries data both
// ways.
type Echo struct {
	net.Conn
	r    *bufio.Reader
	Name string
}

// DialEcho connects from src to a ServeName server at to (or a VIP in
// front of some) and reads who answered, within 10 s.
func (h *Host) DialEcho(ctx context.Context, src netip.Addr, to netip.AddrPort) (*Echo, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := h.Dial(ctx, "tcp", src, to.String())
	if err != nil {
		return nil, err
	}
	e := &Echo{Conn: c, r: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := e.r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("%s -> %s: %w", src, to, err)
	}
	e.Name = strings.TrimSpace(line)
	return e, nil
}

// AskUDP sends a datagram from src to a ServeUDP server at to (or a VIP in
// front of some) and returns the name in the answer, within 5 s. The
// socket is connected to to, so only an answer from to counts.
func (h *Host) AskUDP(ctx context.Context, src netip.Addr, to netip.AddrPort) (string, error) {
	c, err := h.Dial(ctx, "udp", src, to.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("who?")); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("%s -> %s: %w", src, to, err)
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

// Say sends s and a newline and reads them back, within 5 s.
func (e *Echo) Say(s string) error {
	e.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := e.Write([]byte(s + "\n")); err != nil {
		return err
	}
	got, err := e.r.ReadString('\n')
	if err == nil && got != s+"\n" {
		err = fmt.Errorf("sent %q, got %q back", s, got)
	}
	return err
}

// Summary sums up a client run.
type Summary struct {
	Visits, Failed int
	// PerBackend counts connections per backend.
	PerBackend map[string]int
	// Seen lists, per client address, the backends it reached in the
	// order it first reached them.
	Seen map[netip.Addr][]string
	// Mixed are the clients that reached more than one backend.
	Mixed []netip.Addr
	// Errors holds the first few failures.
	Errors []error
}

// Summarize sums up visits.
func Summarize(visits []Visit) Summary {
	s := Summary{PerBackend: map[string]int{}, Seen: map[netip.Addr][]string{}}
	for _, v := range visits {
		s.Visits++
		if v.Err != nil {
			s.Failed++
			if len(s.Errors) < 5 {
				s.Errors = append(s.Errors, v.Err)
			}
			continue
		}
		s.PerBackend[v.Backend]++
		seen := s.Seen[v.Src]
		known := false
		for _, b := range seen {
			known = known || b == v.Backend
		}
		if !known {
			s.Seen[v.Src] = append(seen, v.Backend)
		}
	}
	for c, b := range s.Seen {
		if len(b) > 1 {
			s.Mixed = append(s.Mixed, c)
		}
	}
	sort.Slice(s.Mixed, func(i, j int) bool { return s.Mixed[i].Less(s.Mixed[j]) })
	return s
}

// Groups maps each client group (the clients' addresses masked to bits)
// to the backends its clients reached.
func (s Summary) Groups(bits int) map[netip.Prefix][]string {
	g := map[netip.Prefix][]string{}
	for c, bs := range s.Seen {
		p, _ := c.Prefix(bits)
		for _, b := range bs {
			known := false
			for _, x := range g[p] {
				known = known || x == b
			}
			if !known {
				g[p] = append(g[p], b)
			}
		}
	}
	return g
}

// Spread renders PerBackend in name order: "backend0=17 backend1=16".
func (s Summary) Spread() string {
	names := make([]string, 0, len(s.PerBackend))
	for n := range s.PerBackend {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(n + "=" + strconv.Itoa(s.PerBackend[n]))
	}
	return b.String()
}
