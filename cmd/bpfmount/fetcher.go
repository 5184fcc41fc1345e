//go:build !bpfmount_cli

package main

import (
	"fmt"

	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// newFetcher returns the image client: registry references and, through
// the same client, local oci: layouts.
func newFetcher(o *serveOptions, inUse func() map[string]bool) (*bytecode.Registry, error) {
	opts := bytecode.RegistryOptions{
		CacheDir:         o.imageCache,
		MaxCacheBytes:    o.cacheBytes,
		MaxUnpackedBytes: o.maxUnpacked,
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
