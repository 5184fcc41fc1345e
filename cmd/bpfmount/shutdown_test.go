//go:build !bpfmount_cli

package main

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bpfmount/bpfmount/driver/admin"
)

// hangingAdmin is a call that runs until handle returns.
type hangingAdmin struct {
	started  chan struct{}
	handle   func(ctx context.Context) error
	returned atomic.Bool
}

func (h *hangingAdmin) ListVolumes(ctx context.Context, _ *admin.ListVolumesRequest) (*admin.ListVolumesResponse, error) {
	defer h.returned.Store(true)
	close(h.started)
	if err := h.handle(ctx); err != nil {
		return nil, err
	}
	return &admin.ListVolumesResponse{}, nil
}

// shutdownWith serves h, makes one call, cancels the serve context while
// the call is in flight, and returns serveUntil's result, how long it
// took, and the call's error.
func shutdownWith(t *testing.T, h *hangingAdmin, grace, cancelWait time.Duration) (serveErr error, took time.Duration, callErr error) {
	t.Helper()
	h.started = make(chan struct{})
	sock := filepath.Join(shortTempDir(t), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(serverOptions()...)
	admin.Register(srv, h)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	var stopped time.Time
	go func() { served <- serveUntil(ctx, srv, l, grace, cancelWait) }()

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	called := make(chan error, 1)
	go func() {
		_, err := admin.NewClient(conn).ListVolumes(context.Background())
		called <- err
	}()
	select {
	case <-h.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the call never started")
	}
	stopped = time.Now()
	stop() // SIGTERM
	select {
	case serveErr = <-served:
	case <-time.After(30 * time.Second):
		t.Fatal("serveUntil did not return")
	}
	took = time.Since(stopped)
	return serveErr, took, <-called
}

// A call that finishes within the grace period completes normally.
func TestShutdownLetsCallsFinish(t *testing.T) {
	h := &hangingAdmin{handle: func(context.Context) error { time.Sleep(200 * time.Millisecond); return nil }}
	serveErr, _, callErr := shutdownWith(t, h, 10*time.Second, time.Second)
	if serveErr != nil || callErr != nil {
		t.Errorf("serveUntil: %v; call: %v; want both to succeed", serveErr, callErr)
	}
}

// A call still running after the grace period has its context cancelled,
// and serveUntil waits for it to return.
func TestShutdownCancelsAfterGrace(t *testing.T) {
	var sawCancel atomic.Bool
	h := &hangingAdmin{handle: func(ctx context.Context) error {
		<-ctx.Done()
		sawCancel.Store(true)
		time.Sleep(100 * time.Millisecond) // rolling back
		return ctx.Err()
	}}
	serveErr, took, callErr := shutdownWith(t, h, 300*time.Millisecond, 10*time.Second)
	if serveErr != nil {
		t.Errorf("serveUntil: %v", serveErr)
	}
	if !sawCancel.Load() || !h.returned.Load() {
		t.Errorf("cancelled %v, returned before serveUntil %v; want both", sawCancel.Load(), h.returned.Load())
	}
	if took < 300*time.Millisecond {
		t.Errorf("stopped after %v, before the grace period", took)
	}
	if callErr == nil {
		t.Error("the cancelled call succeeded")
	}
}

// A call that ignores its context cannot keep the daemon from exiting.
func TestShutdownGivesUpOnCallsIgnoringCancel(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	h := &hangingAdmin{handle: func(context.Context) error { <-release; return nil }}
	serveErr, took, _ := shutdownWith(t, h, 100*time.Millisecond, 300*time.Millisecond)
	if serveErr == nil || !strings.Contains(serveErr.Error(), "did not return within 300ms of being cancelled") {
		t.Errorf("serveUntil: %v; want an error naming the wait", serveErr)
	}
	if took > 10*time.Second {
		t.Errorf("took %v", took)
	}
}
