package promtext

import (
	"bufio"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	metrics "github.com/hashicorp/go-metrics"
)

// Options configure a Sink; the zero value is go-metrics' Prometheus
// sink's defaults.
type Options struct {
	// Expiration drops a series not updated for this long (0: 60 s;
	// negative: never).
	Expiration time.Duration
	// MaxSeries bounds the series held (0: 10 000).
	MaxSeries int
	// Now is the clock (nil: time.Now); tests inject one.
	Now func() time.Time
}

// Sink collects metrics; it is an http.Handler of their text form.
type Sink struct {
	o       Options
	mu      sync.Mutex
	series  map[seriesID]*series
	dropped uint64 // series refused at MaxSeries
}

type kind uint8

const (
	counter kind = iota
	gauge
	summary
)

var typeNames = [...]string{counter: "counter", gauge: "gauge", summary: "summary"}

// seriesID names a series: a counter and a gauge of one name are two.
type seriesID struct {
	kind         kind
	name, labels string
}

type series struct {
	id      seriesID // labels rendered: {a="b",c="d"}, or empty
	value   float64
	count   uint64
	samples []sample // summary: the last window's, oldest first, bounded
	updated time.Time
}

type sample struct {
	at time.Time
	v  float64
}

const (
	summaryWindow  = 10 * time.Second
	summarySamples = 1024 // a summary's bound: the quantiles of the most recent 512-1024
)

var objectives = []float64{0.5, 0.9, 0.99}

// New returns an empty Sink.
func New(o Options) *Sink {
	if o.Expiration == 0 {
		o.Expiration = 60 * time.Second
	}
	if o.MaxSeries <= 0 {
		o.MaxSeries = 10000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Sink{o: o, series: map[seriesID]*series{}}
}

var nameReplacer = strings.NewReplacer(" ", "_", ".", "_", "=", "_", "-", "_", "/", "_")

// update applies f to the series of key and labels, made if new.
func (s *Sink) update(k kind, key []string, labels []metrics.Label, f func(*series)) {
	name := nameReplacer.Replace(strings.Join(key, "_"))
	rendered := renderLabels(labels)
	id := seriesID{k, name, rendered}
	now := s.o.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	sr := s.series[id]
	if sr == nil {
		if len(s.series) >= s.o.MaxSeries {
			s.dropped++
			return
		}
		sr = &series{id: id}
		s.series[id] = sr
	}
	sr.updated = now
	f(sr)
}

// renderLabels is the label set in exposition form, sorted by name.
func renderLabels(labels []metrics.Label) string {
	if len(labels) == 0 {
		return ""
	}
	byName := func(a, b metrics.Label) int { return strings.Compare(a.Name, b.Name) }
	ls := labels
	if !slices.IsSortedFunc(ls, byName) { // the caller's slice is not ours to sort
		ls = slices.Clone(labels)
		slices.SortStableFunc(ls, byName)
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, l := range ls {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(nameReplacer.Replace(l.Name))
		b.WriteString(`="`)
		b.WriteString(escapeValue(l.Value))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

var valueEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)

func escapeValue(v string) string { return valueEscaper.Replace(v) }

// SetGauge sets a gauge.
func (s *Sink) SetGauge(key []string, val float32) {
	s.SetPrecisionGaugeWithLabels(key, float64(val), nil)
}

// SetGaugeWithLabels sets a gauge with labels.
func (s *Sink) SetGaugeWithLabels(key []string, val float32, labels []metrics.Label) {
	s.SetPrecisionGaugeWithLabels(key, float64(val), labels)
}

// SetPrecisionGauge sets a gauge to a float64.
func (s *Sink) SetPrecisionGauge(key []string, val float64) {
	s.SetPrecisionGaugeWithLabels(key, val, nil)
}

// SetPrecisionGaugeWithLabels sets a gauge with labels to a float64.
func (s *Sink) SetPrecisionGaugeWithLabels(key []string, val float64, labels []metrics.Label) {
	s.update(gauge, key, labels, func(sr *series) { sr.value = val })
}

// EmitKey does nothing: a pulled format keeps no stream of values (as
// go-metrics' Prometheus sink).
func (s *Sink) EmitKey([]string, float32) {}

// IncrCounter adds to a counter.
func (s *Sink) IncrCounter(key []string, val float32) { s.IncrCounterWithLabels(key, val, nil) }

// IncrCounterWithLabels adds to a counter with labels; a negative val is
// ignored (a counter only grows).
func (s *Sink) IncrCounterWithLabels(key []string, val float32, labels []metrics.Label) {
	if val < 0 || math.IsNaN(float64(val)) {
		return
	}
	s.update(counter, key, labels, func(sr *series) { sr.value += float64(val) })
}

// AddSample observes a value of a summary.
func (s *Sink) AddSample(key []string, val float32) { s.AddSampleWithLabels(key, val, nil) }

// AddSampleWithLabels observes a value of a summary with labels.
func (s *Sink) AddSampleWithLabels(key []string, val float32, labels []metrics.Label) {
	s.update(summary, key, labels, func(sr *series) {
		sr.value += float64(val)
		sr.count++
		if len(sr.samples) == summarySamples { // keep the newer half: one copy per half-window, not per sample
			sr.samples = append(sr.samples[:0], sr.samples[summarySamples/2:]...)
		}
		sr.samples = append(sr.samples, sample{sr.updated, float64(val)})
	})
}

// ServeHTTP writes every live series in the text format, families sorted
// by name.
func (s *Sink) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	bw := bufio.NewWriter(w)
	s.write(bw)
	bw.Flush()
}

// snap is a series as a scrape writes it, copied out of the lock.
type snap struct {
	seriesID
	value     float64
	count     uint64
	quantiles []float64 // a summary's window
}

func (s *Sink) snapshot() []snap {
	now := s.o.Now()
	s.mu.Lock()
	out := make([]snap, 0, len(s.series)+1)
	for id, sr := range s.series {
		if s.o.Expiration > 0 && now.Sub(sr.updated) > s.o.Expiration {
			delete(s.series, id)
			continue
		}
		sn := snap{seriesID: id, value: sr.value, count: sr.count}
		if id.kind == summary {
			i := 0
			for i < len(sr.samples) && now.Sub(sr.samples[i].at) > summaryWindow {
				i++
			}
			sr.samples = append(sr.samples[:0], sr.samples[i:]...)
			vs := make([]float64, len(sr.samples))
			for j, x := range sr.samples {
				vs[j] = x.v
			}
			sn.quantiles = vs // sorted outside the lock
		}
		out = append(out, sn)
	}
	dropped := s.dropped
	s.mu.Unlock()
	if dropped > 0 {
		out = append(out, snap{seriesID: seriesID{kind: counter, name: "promtext_series_dropped"}, value: float64(dropped)})
	}
	return out
}

func (s *Sink) write(w *bufio.Writer) {
	all := s.snapshot()
	slices.SortFunc(all, func(a, b snap) int {
		if c := strings.Compare(a.name, b.name); c != 0 {
			return c
		}
		if a.kind != b.kind {
			return int(a.kind) - int(b.kind)
		}
		return strings.Compare(a.labels, b.labels)
	})
	for i, sn := range all {
		if i == 0 || all[i-1].name != sn.name || all[i-1].kind != sn.kind {
			w.WriteString("# HELP " + sn.name + " " + sn.name + "\n")
			w.WriteString("# TYPE " + sn.name + " " + typeNames[sn.kind] + "\n")
		}
		if sn.kind != summary {
			writeSample(w, sn.name, sn.labels, sn.value)
			continue
		}
		slices.Sort(sn.quantiles)
		for _, q := range objectives {
			v := math.NaN()
			if n := len(sn.quantiles); n > 0 {
				v = sn.quantiles[min(n-1, int(q*float64(n)))]
			}
			writeSample(w, sn.name, withLabel(sn.labels, "quantile", strconv.FormatFloat(q, 'g', -1, 64)), v)
		}
		writeSample(w, sn.name+"_sum", sn.labels, sn.value)
		writeSample(w, sn.name+"_count", sn.labels, float64(sn.count))
	}
}

// withLabel adds name="value" to a rendered label set.
func withLabel(labels, name, value string) string {
	l := name + `="` + escapeValue(value) + `"`
	if labels == "" {
		return "{" + l + "}"
	}
	return labels[:len(labels)-1] + "," + l + "}"
}

func writeSample(w *bufio.Writer, name, labels string, v float64) {
	w.WriteString(name)
	w.WriteString(labels)
	w.WriteByte(' ')
	w.WriteString(formatFloat(v))
	w.WriteByte('\n')
}

// formatFloat writes a value as the Prometheus client does.
func formatFloat(v float64) string {
	switch {
	case v == 1:
		return "1"
	case v == 0:
		return "0"
	case v == -1:
		return "-1"
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, +1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
