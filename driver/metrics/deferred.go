package metrics

import "github.com/prometheus/client_golang/prometheus"

// DeferredAttach counts attaches of programs loaded at publish and
// attached later (a pod's own interface), by hook and result (attached,
// failed): both label sets are closed.
var DeferredAttach = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: namespace, Name: "deferred_attach_total",
	Help: "Programs loaded at publish and attached later in the pod's own network namespace: attaches (a new or replaced sandbox) and failures, by hook and result (attached, failed).",
}, []string{"hook", "result"})

func init() { registry.MustRegister(DeferredAttach) }
