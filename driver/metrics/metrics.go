// Package metrics defines bpfmount's Prometheus metrics and serves them.
//
// Counters and histograms are updated where things happen; gauges that
// describe the node (volumes, programs, attachments) are computed at scrape
// time from a snapshot function, so they can never drift from the truth.
package metrics

import (
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "bpfmount"

// Buckets span the sub-millisecond cached publish to a slow registry pull.
var durationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

var (
	// PublishDuration times NodePublishVolume by hook and gRPC code.
	PublishDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "publish_duration_seconds",
		Help:    "Time NodePublishVolume took, by hook and gRPC code.",
		Buckets: durationBuckets,
	}, []string{"hook", "code"})
	// UnpublishDuration times NodeUnpublishVolume by hook and gRPC code.
	UnpublishDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "unpublish_duration_seconds",
		Help:    "Time NodeUnpublishVolume took, by hook and gRPC code.",
		Buckets: durationBuckets,
	}, []string{"hook", "code"})
	// ImageFetches counts image fetches by result: pull, cache_hit, pull_error.
	ImageFetches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "image_fetches_total",
		Help: "Bytecode image fetches, by result (pull, cache_hit, pull_error).",
	}, []string{"result"})
	// PolicyDenials counts publishes the node policy denied, by namespace.
	PolicyDenials = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "policy_denials_total",
		Help: "Publish requests denied by the node policy, by pod namespace: a namespace a policy rule names exactly, \"other\" for any other, \"local\" for requests without a pod.",
	}, []string{"namespace"})
	// InterfaceLost counts attachments dropped because their interface vanished.
	InterfaceLost = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "attachments_lost_total",
		Help: "Attachments whose interface disappeared while attached.",
	})
	// RestoreErrors counts volumes and interrupted operations the daemon
	// could not restore at start; it kept them and went on.
	RestoreErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "restore_errors_total",
		Help: "Volume records, pins or interrupted operations that could not be restored at start (kept and marked broken; the daemon went on).",
	})
)

// Attachment is one attached program, as the snapshot reports it.
type Attachment struct {
	Interface, Hook string
	Attached        bool
}

// Dispatcher is one dispatcher chain, as the snapshot reports it.
type Dispatcher struct {
	Interface, Hook string
	Revisions       uint64
}

// State is the node as the driver sees it at scrape time.
type State struct {
	Volumes     int
	Attachments []Attachment
	Dispatchers []Dispatcher
}

var (
	volumesDesc     = prometheus.NewDesc(namespace+"_volumes", "Published volumes.", nil, nil)
	programsDesc    = prometheus.NewDesc(namespace+"_programs_loaded", "Loaded programs (shared attachments count once).", nil, nil)
	attachmentsDesc = prometheus.NewDesc(namespace+"_attachments", "Attached programs per interface and hook.", []string{"interface", "hook"}, nil)
	detachedDesc    = prometheus.NewDesc(namespace+"_programs_detached", "Loaded programs whose interface is gone (maps still mounted).", nil, nil)
	revisionsDesc   = prometheus.NewDesc(namespace+"_dispatcher_revisions_total", "Dispatcher revisions built by this process, by interface and hook.", []string{"interface", "hook"}, nil)
)

type stateCollector struct {
	mu       sync.Mutex
	snapshot func() State
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- volumesDesc
	ch <- programsDesc
	ch <- attachmentsDesc
	ch <- detachedDesc
	ch <- revisionsDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	fn := c.snapshot
	c.mu.Unlock()
	if fn == nil {
		return
	}
	s := fn()
	ch <- prometheus.MustNewConstMetric(volumesDesc, prometheus.GaugeValue, float64(s.Volumes))
	ch <- prometheus.MustNewConstMetric(programsDesc, prometheus.GaugeValue, float64(len(s.Attachments)))
	per := map[[2]string]int{}
	detached := 0
	for _, a := range s.Attachments {
		if !a.Attached {
			detached++
			continue
		}
		per[[2]string{a.Interface, a.Hook}]++
	}
	for k, n := range per {
		ch <- prometheus.MustNewConstMetric(attachmentsDesc, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
	ch <- prometheus.MustNewConstMetric(detachedDesc, prometheus.GaugeValue, float64(detached))
	for _, d := range s.Dispatchers {
		ch <- prometheus.MustNewConstMetric(revisionsDesc, prometheus.CounterValue, float64(d.Revisions), d.Interface, d.Hook)
	}
}

var (
	registry = prometheus.NewRegistry()
	state    = &stateCollector{}
)

func init() {
	registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		PublishDuration, UnpublishDuration, ImageFetches, PolicyDenials, InterfaceLost, RestoreErrors,
		state, programs,
	)
}

// SetStateFunc sets the function the node gauges are computed from.
func SetStateFunc(fn func() State) {
	state.mu.Lock()
	state.snapshot = fn
	state.mu.Unlock()
}

// Handler serves the metrics in the Prometheus text format.
func Handler() http.Handler {
	return promhttp.HandlerFor(registry, promhttp.HandlerOpts{Registry: registry})
}
