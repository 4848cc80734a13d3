package testenv

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
)

// Server is a built-in server running in a host; Close stops it and
// waits for its goroutines.
type Server struct {
	ln   net.Listener
	pc   net.PacketConn
	http *http.Server
	wg   sync.WaitGroup
}

// Close stops the server.
func (s *Server) Close() error {
	var err error
	switch {
	case s.http != nil:
		err = s.http.Close()
	case s.ln != nil:
		err = s.ln.Close()
	case s.pc != nil:
		err = s.pc.Close()
	}
	s.wg.Wait()
	return err
}

// ServeName starts a TCP server on port in the host that answers every
// connection with the host's name and a newline, then echoes what it
// reads: a test knows who served it.
func (h *Host) ServeName(port int) (*Server, error) {
	ln, err := h.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		var conns sync.WaitGroup
		defer conns.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				if _, err := io.WriteString(c, h.Name+"\n"); err == nil {
					io.Copy(c, c)
				}
			}()
		}
	}()
	h.env.closeWith(s)
	return s, nil
}

// ServeHTTP starts an HTTP server on port in the host that answers every
// request with the host's name.
func (h *Host) ServeHTTP(port int) (*Server, error) {
	ln, err := h.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln, http: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, h.Name+"\n")
	})}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.http.Serve(ln) // until Close
	}()
	h.env.closeWith(s)
	return s, nil
}

// ServeUDP starts a UDP server on port in the host that answers every
// datagram with the host's name.
func (h *Host) ServeUDP(port int) (*Server, error) {
	pc, err := h.ListenPacket("udp", ":"+strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	s := &Server{pc: pc}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 64<<10)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(h.Name+"\n"), from)
		}
	}()
	h.env.closeWith(s)
	return s, nil
}

// closers are servers the Env stops before removing its hosts.
func (e *Env) closeWith(s *Server) {
	e.mu.Lock()
	e.servers = append(e.servers, s)
	e.mu.Unlock()
}
