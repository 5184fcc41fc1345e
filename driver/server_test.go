package driver_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bpfmount/bpfmount/driver"
)

// TestListenSocketAppearsListening: the socket's name appears by a rename
// once it listens, never created in place at bind() (when a client that
// connects is refused); it has mode 0600, accepts, and Close removes it.
func TestListenSocketAppearsListening(t *testing.T) {
	dir, err := os.MkdirTemp("", "bpfmount-listen-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "csi.sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil { // a stale file from an earlier run
		t.Fatal(err)
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	l, err := driver.Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	var events []string
	buf := make([]byte, 4096)
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
		kind := "created"
		if ev.Mask&unix.IN_MOVED_TO != 0 {
			kind = "renamed"
		}
		events = append(events, kind+" "+name)
		off += unix.SizeofInotifyEvent + int(ev.Len)
	}
	for _, e := range events {
		if e == "created csi.sock" {
			t.Errorf("the socket was created in place (events %q): a client connecting between bind and listen is refused", events)
		}
	}
	if events[len(events)-1] != "renamed csi.sock" {
		t.Errorf("events %q: want the socket renamed into place last", events)
	}
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dialing the socket: %v", err)
	}
	c.Close()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("after Close the directory holds %v, want nothing", left)
	}
}

// TestServerReusesGoroutines: calls in sequence run on a few long-lived
// workers, not on a new goroutine each (whose stack grows again, by
// copying, on every call).
func TestServerReusesGoroutines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "csi.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	record := grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		buf := make([]byte, 64)
		id := strings.Fields(string(buf[:runtime.Stack(buf, false)]))[1] // "goroutine N [running]:"
		mu.Lock()
		seen[id] = true
		mu.Unlock()
		return h(ctx, req)
	})
	srv := driver.NewServer(&driver.Driver{}, record)
	go srv.Serve(l)
	defer srv.Stop()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	node := csi.NewNodeClient(conn)
	const calls = 40
	for range calls {
		if _, err := node.NodeGetCapabilities(context.Background(), &csi.NodeGetCapabilitiesRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	// The workers, and a goroutine now and then for a call that came
	// before a worker was back; one goroutine per call without them.
	if len(seen) > calls/2 {
		t.Errorf("%d calls in sequence ran on %d goroutines, want a few long-lived workers", calls, len(seen))
	}
}
