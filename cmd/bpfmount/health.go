//go:build !bpfmount_cli

package main

import (
	"context"
	"errors"
	"net/http"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/registration"
)

// healthHandler answers 200 once the driver has restored its state and
// answers its own Probe, and, when it registers itself with kubelet, while
// that registration holds.
func healthHandler(d *driver.Driver, registers bool) http.Handler {
	return registration.HealthHandler(func(ctx context.Context) error {
		resp, err := d.Probe(ctx, &csi.ProbeRequest{})
		if err != nil {
			return err
		}
		if !resp.GetReady().GetValue() {
			return errors.New("driver not ready: restoring state")
		}
		if registers {
			return registration.Check(ctx)
		}
		return nil
	})
}
