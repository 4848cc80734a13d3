package main

import (
	"io"
	"net"
)

// backend modes, chosen by the first byte a client sends.
const (
	modeSink  = 's' // read and discard until EOF
	modeEcho  = 'e' // echo
	modeClose = 'c' // write one byte and close (server closes first)
)

func serveBackend(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var m [1]byte
			if _, err := io.ReadFull(c, m[:]); err != nil {
				return
			}
			switch m[0] {
			case 'G': // an HTTP request: the wrk rows
				serveHTTP(c)
			case modeSink:
				io.Copy(io.Discard, c)
			case modeEcho:
				io.Copy(c, c)
			case modeClose:
				c.Write(m[:])
			}
		}()
	}
}
