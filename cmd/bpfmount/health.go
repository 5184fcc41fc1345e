package main

import (
	"context"
	"net/http"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bpfmount/bpfmount/driver"
)

// healthHandler answers 200 once the driver has restored its state and
// answers its own Probe.
func healthHandler(d *driver.Driver) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		resp, err := d.Probe(ctx, &csi.ProbeRequest{})
		if err != nil || !resp.GetReady().GetValue() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
}
