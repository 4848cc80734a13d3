// Package testserver runs the small TCP servers that tests put behind
// tether: a listener on loopback and a handler per connection, all of it
// stopped when the test ends. Only tests import it.
package testserver
