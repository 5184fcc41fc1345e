package registration

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"k8s.io/klog/v2"
)

// HealthTimeout bounds one health probe.
const HealthTimeout = 2 * time.Second

// HealthHandler serves /healthz for kubelet's liveness probe: 200 "ok" when
// probe returns nil within HealthTimeout, 503 with the error otherwise.
// Other paths get 404. A probe that ignores its context cannot hold the
// response past the timeout; it is left to finish on its own.
//
// A typical probe calls the CSI Probe RPC on the driver's own socket (it
// proves the gRPC server answers) and then Check.
func HealthHandler(probe func(context.Context) error) http.Handler {
	return healthHandler{probe: probe, timeout: HealthTimeout}
}

type healthHandler struct {
	probe   func(context.Context) error
	timeout time.Duration
}

func (h healthHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/healthz" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	errc := make(chan error, 1) // buffered: a late probe must not leak blocked
	go func() {
		defer func() {
			if p := recover(); p != nil {
				errc <- fmt.Errorf("health probe panicked: %v", p)
			}
		}()
		errc <- h.probe(ctx)
	}()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		err = fmt.Errorf("health probe did not answer within %s", h.timeout)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err != nil {
		klog.V(2).InfoS("Health check failed", "err", err)
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "unhealthy: %v\n", err)
		return
	}
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "ok")
}
