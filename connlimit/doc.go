// Package connlimit counts a real server's open connections against
// IPVS's two thresholds (ipvsadm -x and -y): at the upper one the server
// is full and takes no new client; it takes clients again once the count
// is below the lower one, or below three quarters of the upper one when
// no lower one is set, as IPVS does. The gap keeps a server near its limit
// from flapping between full and not on every connection.
package connlimit
