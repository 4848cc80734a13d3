package config

import (
	"reflect"
	"strings"
)

// RestartNeeded names the settings of next that differ from running, the
// file tether started with, and that only a restart applies: the log, the
// metrics and admin listeners, the persistence table's capacity, the
// cluster and the director's queues. A reload applies everything else, and says these.
func RestartNeeded(running, next *File) []string {
	var out []string
	for _, f := range []struct {
		key  string
		a, b any
	}{
		{"log", running.Log, next.Log},
		{"metrics", running.Metrics, next.Metrics},
		{"admin", running.Admin, next.Admin},
		{"affinity.capacity", running.Affinity.Capacity, next.Affinity.Capacity},
		{"cluster", running.Cluster, next.Cluster},
		{"director.queue", running.Director.Queue, next.Director.Queue},
		{"director.queues", running.Director.Queues, next.Director.Queues},
		{"director.queue_length", running.Director.QueueLength, next.Director.QueueLength},
		{"director.fail_open", running.Director.FailOpen, next.Director.FailOpen},
		{"director.cpu_fanout", running.Director.CPUFanout, next.Director.CPUFanout},
		{"director.kernel_templates", running.Director.KernelTemplatesOn(), next.Director.KernelTemplatesOn()},
	} {
		// Director settings matter only while both run the director: a
		// first director service starts its queues on reload.
		if strings.HasPrefix(f.key, "director.") && (!running.HasDirector() || !next.HasDirector()) {
			continue
		}
		if !reflect.DeepEqual(f.a, f.b) {
			out = append(out, f.key)
		}
	}
	return out
}
