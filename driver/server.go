package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
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
// programs into the kernel, so only root may. The socket is bound and
// listening under a hidden temporary name in the same directory and then
// renamed into place: a socket file appears at bind(), before listen(), and a
// client that connects in between (kubelet's registrar, the CLI, a readiness
// probe) is refused and, with gRPC, backs off for about a second.
func Listen(endpoint string) (net.Listener, error) {
	path, err := ParseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", tmp, err)
	}
	old := umask(0o177)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	umask(old)
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false) // renamed below; Close removes the final name
	fail := func(err error) (net.Listener, error) {
		l.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("putting the socket in place at %s: %w", path, err))
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &socketListener{UnixListener: l, path: path, fi: fi}, nil
}

// socketListener removes its socket file on Close, as net.Listen's does,
// unless another process has put its own socket there since.
type socketListener struct {
	*net.UnixListener
	path string
	fi   os.FileInfo
	once sync.Once
}

func (l *socketListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, statErr := os.Lstat(l.path); statErr == nil && os.SameFile(fi, l.fi) {
			os.Remove(l.path)
		}
	})
	return err
}

// NewServer returns a gRPC server serving d's Identity and Node services,
// with every call logged, secrets stripped.
//
// Calls run on a few long-lived workers rather than a new goroutine each:
// a publish's stack is deep (the loader, cilium/ebpf), and a fresh
// goroutine grew its stack by copying on every call, about a quarter of the
// round trip of a call that does nothing. Calls beyond the workers (a
// burst) still get a goroutine each, so none waits for a worker.
func NewServer(d *Driver, opts ...grpc.ServerOption) *grpc.Server {
	base := []grpc.ServerOption{grpc.ChainUnaryInterceptor(logCalls), grpc.NumStreamWorkers(uint32(max(4, runtime.NumCPU())))}
	srv := grpc.NewServer(append(base, opts...)...)
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
// are checked (nothing unchecked reaches the log), in one audit line at the
// default verbosity; others, at -v=4, with secrets stripped by
// protosanitizer and the whole line clipped. Failures are logged here at
// every verbosity (a request refused before it was checked has no audit
// line); successes only at -v=4.
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
	} else if klog.V(4).Enabled() {
		klog.InfoS("CSI call done", "method", info.FullMethod, "duration", time.Since(start))
	}
	return resp, err
}

func isMutating(method string) bool {
	return strings.HasSuffix(method, "/NodePublishVolume") || strings.HasSuffix(method, "/NodeUnpublishVolume")
}
