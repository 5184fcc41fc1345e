package testenv

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type readyIdentity struct {
	csi.UnimplementedIdentityServer
}

func (readyIdentity) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// TestDialReadyAfterRefusal: a daemon whose socket file exists a moment
// before it listens (as every bpfmount before the socket was renamed into
// place) refuses the first connection; DialReady still returns as soon as
// it serves, not after gRPC's default reconnect backoff of about a second
// (jittered to no less than 0.8 s).
func TestDialReadyAfterRefusal(t *testing.T) {
	dir, err := os.MkdirTemp("", "bpfmount-dial-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "csi.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, readyIdentity{})
	t.Cleanup(srv.Stop)
	go func() {
		// DialReady's first attempt, made at once, is refused: listen
		// only a little later.
		time.Sleep(50 * time.Millisecond)
		if err := unix.Listen(fd, 16); err != nil {
			panic(err)
		}
		f := os.NewFile(uintptr(fd), sock)
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			panic(err)
		}
		srv.Serve(l)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	conn, err := DialReady(ctx, sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if took := time.Since(start); took >= 700*time.Millisecond {
		t.Errorf("DialReady took %v after a refused connection: it waited out a reconnect backoff", took)
	}
}
