package main

import (
	"context"
	"fmt"

	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// mux sends oci: references to the local layout fetcher and the rest to the
// registry client.
type mux struct {
	layout   bytecode.Fetcher
	registry bytecode.Fetcher
}

func (m mux) Fetch(ctx context.Context, req bytecode.Request) (*bytecode.Image, error) {
	if bytecode.IsLayout(req.Reference) {
		return m.layout.Fetch(ctx, req)
	}
	return m.registry.Fetch(ctx, req)
}

func newFetcher(o *serveOptions, inUse func() map[string]bool) (*bytecode.Registry, error) {
	opts := bytecode.RegistryOptions{
		CacheDir:         o.imageCache,
		MaxCacheBytes:    o.cacheBytes,
		PullTimeout:      o.pullTimeout,
		DockerConfigPath: o.dockerConfig,
		RequireSignature: o.requireSigned,
		InUse:            inUse,
		Observe:          func(event string) { metrics.ImageFetches.WithLabelValues(event).Inc() },
	}
	if o.verifyKey != "" {
		v, err := bytecode.LoadVerifier(o.verifyKey)
		if err != nil {
			return nil, fmt.Errorf("--verify-key: %w", err)
		}
		opts.Verifier = v
	}
	return bytecode.NewRegistry(opts)
}
