package main

import (
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// sdNotify tells the service manager tether's state, systemd's notify
// protocol (sd_notify(3)): a datagram to $NOTIFY_SOCKET. Without the
// variable (not under systemd Type=notify) it does nothing. Errors are
// returned for the log; tether runs on either way.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' { // an abstract socket
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// reloading is the notify state that starts a reload: systemd wants the
// monotonic clock with it, to match the reload to the ExecReload= that
// asked for it.
func reloading() string {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", time.Duration(ts.Nano())/time.Microsecond)
}
