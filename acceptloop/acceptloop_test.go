package acceptloop

import (
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// A failing accept backs off, doubling from 5ms to 1s, and a success
// resets the back-off: the transparent loop used to retry at once and
// take more than a core while descriptors were short.
func TestAcceptBacksOff(t *testing.T) {
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	script := []error{emfile, emfile, emfile, emfile, emfile, emfile, emfile, emfile, emfile, nil, emfile, net.ErrClosed}
	var slept []time.Duration
	served, failures := 0, 0
	Loop{
		Accept: func() (*net.TCPConn, error) {
			err := script[0]
			script = script[1:]
			return nil, err
		},
		Serve:  func(*net.TCPConn) { served++ },
		Failed: func(error, time.Duration) { failures++ },
		Sleep:  func(d time.Duration) { slept = append(slept, d) },
	}.Run()
	ms := time.Millisecond
	want := []time.Duration{5 * ms, 10 * ms, 20 * ms, 40 * ms, 80 * ms, 160 * ms, 320 * ms, 640 * ms, time.Second, 5 * ms}
	if diff := cmp.Diff(want, slept); diff != "" {
		t.Errorf("back-off delays (-want +got):\n%s", diff)
	}
	if served != 1 || failures != 10 {
		t.Errorf("served %d, failures %d; want 1 and 10", served, failures)
	}
}
