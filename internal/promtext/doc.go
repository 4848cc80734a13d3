// Package promtext is a go-metrics sink that serves what it is given in
// the Prometheus text exposition format (version 0.0.4), as go-metrics'
// own Prometheus sink did, without the Prometheus client library: that
// library brought protobuf with it, 2.4 MB of the binary and 2 MB of
// every tether's resident memory, for a format that is a few lines of
// text.
//
// It keeps what the old sink did that users see: names are the key's
// parts joined by "_" (spaces, dots, dashes, "=" and "/" made "_"), each
// distinct label set is its own series, counters and gauges keep their
// value, a sample feeds a summary (0.5, 0.9 and 0.99 quantiles over the
// last 10 s, with its sum and count), and a series nobody updated for
// Expiration is dropped from the output. Unlike it, it holds at most
// MaxSeries series: a new one past that is counted in
// promtext_series_dropped, not kept.
package promtext
