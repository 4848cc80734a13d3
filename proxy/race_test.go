//go:build race

package proxy

// raceDetector: this test binary runs under the race detector, where
// sync.Pool drops items at random, so allocation counts mean nothing.
const raceDetector = true
