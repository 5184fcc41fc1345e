//go:build !bpfmount_cli

package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
)

// serverOptions make Stop wait for the method handlers it cancels, so the
// daemon never closes the loader under a call that is still rolling back.
func serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.WaitForHandlers(true)}
}

// serveUntil serves srv on l until ctx is done (SIGTERM). Then it accepts
// no new calls and lets the calls in flight finish for up to grace; past
// that it cancels their contexts and waits up to cancelWait for them to
// return. A call that ignores its context cannot keep the daemon from
// exiting: serveUntil returns an error naming the wait instead.
func serveUntil(ctx context.Context, srv *grpc.Server, l net.Listener, grace, cancelWait time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	klog.InfoS("Stopping: finishing calls in flight", "grace", grace)
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
		return nil
	case <-time.After(grace):
	}
	klog.InfoS("Calls still in flight after the grace period: cancelling them", "grace", grace)
	go srv.Stop() // cancels every call's context; GracefulStop returns with it
	select {
	case <-stopped:
		return nil
	case <-time.After(cancelWait):
		return fmt.Errorf("calls in flight did not return within %s of being cancelled: exiting without them", cancelWait)
	}
}
