package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/internal/endpoint"
)

// ParseEndpoint turns "unix:///path", "unix:/path" or "/path" into a socket
// path (see package endpoint, which the CLI shares).
func ParseEndpoint(ep string) (string, error) { return endpoint.Parse(ep) }

// Listen opens the CSI socket with mode 0600: whoever can reach it can load
// programs into the kernel, so only root may.
func Listen(endpoint string) (net.Listener, error) {
	path, err := ParseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	old := umask(0o177)
	l, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// NewServer returns a gRPC server serving d's Identity and Node services,
// with every call logged, secrets stripped.
func NewServer(d *Driver, opts ...grpc.ServerOption) *grpc.Server {
	srv := grpc.NewServer(append([]grpc.ServerOption{grpc.ChainUnaryInterceptor(logCalls)}, opts...)...)
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	return srv
}

// Serve serves until ctx is done, then stops accepting calls and waits for
// the ones in flight (SIGTERM handling).
func Serve(ctx context.Context, srv *grpc.Server, l net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		klog.InfoS("Stopping: finishing calls in flight")
		srv.GracefulStop()
		return nil
	}
}

// logCalls logs each call and its outcome, every value bounded. The
// requests that change the node are logged by the driver itself once they
// are checked (nothing unchecked reaches the log); others, at -v=4, with
// secrets stripped by protosanitizer and the whole line clipped.
func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	mutating := isMutating(info.FullMethod)
	if klog.V(4).Enabled() && !mutating {
		klog.InfoS("CSI call", "method", info.FullMethod, "request", clip(protosanitizer.StripSecrets(req).String(), maxLogError))
	}
	resp, err := handler(ctx, req)
	if err != nil {
		st, _ := status.FromError(err)
		klog.InfoS("CSI call failed", "method", info.FullMethod, "code", st.Code().String(), "error", clip(st.Message(), maxLogError), "duration", time.Since(start))
	} else if klog.V(4).Enabled() || mutating {
		klog.InfoS("CSI call done", "method", info.FullMethod, "duration", time.Since(start))
	}
	return resp, err
}

func isMutating(method string) bool {
	return strings.HasSuffix(method, "/NodePublishVolume") || strings.HasSuffix(method, "/NodeUnpublishVolume")
}
