package registration

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

const (
	testDriver   = "csi.bpfmount.io"
	testEndpoint = "/var/lib/kubelet/plugins/csi.bpfmount.io/csi.sock"
)

// shortTempDir returns a directory whose socket paths fit in sun_path
// (108 bytes): t.TempDir() paths can be longer.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "reg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startServe runs Serve in the background and waits for the socket. The
// returned function stops it and returns Serve's error.
func startServe(t *testing.T, opts Options) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, opts) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		fi, err := os.Lstat(opts.SocketPath)
		if err == nil && fi.Mode().Type() == os.ModeSocket && Current().SocketPath != "" {
			break
		}
		select {
		case err := <-errc:
			cancel()
			t.Fatalf("Serve returned before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("registration socket %s did not appear", opts.SocketPath)
		}
		time.Sleep(5 * time.Millisecond)
	}
	var stopped bool
	var serveErr error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case serveErr = <-errc:
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return after its context was cancelled")
			}
		}
		return serveErr
	}
	t.Cleanup(func() { stop() })
	return stop
}

// dialKubelet connects to the registration socket the way kubelet's plugin
// watcher does: gRPC over the unix socket, no TLS.
func dialKubelet(t *testing.T, path string) registerapi.RegistrationClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", strings.TrimPrefix(addr, "unix://"))
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return registerapi.NewRegistrationClient(conn)
}

func TestRegistrationAsKubelet(t *testing.T) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "csi.bpfmount.io-reg.sock")
	stop := startServe(t, Options{DriverName: testDriver, Endpoint: testEndpoint, SocketPath: sock})

	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("registration socket mode = %#o, want 0600", perm)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only the socket (no temporary file left)", names)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := dialKubelet(t, sock)
	info, err := c.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatalf("GetInfo: %v", err)
	}
	if info.GetType() != registerapi.CSIPlugin {
		t.Errorf("type = %q, want %q", info.GetType(), registerapi.CSIPlugin)
	}
	if info.GetName() != testDriver {
		t.Errorf("name = %q, want %q", info.GetName(), testDriver)
	}
	if info.GetEndpoint() != testEndpoint {
		t.Errorf("endpoint = %q, want %q", info.GetEndpoint(), testEndpoint)
	}
	if !slices.Equal(info.GetSupportedVersions(), []string{"1.0.0"}) {
		t.Errorf("versions = %q, want [1.0.0]", info.GetSupportedVersions())
	}

	if reg, e := Status(); reg || e != "" {
		t.Errorf("before any notification: Status() = %v, %q; want false, \"\"", reg, e)
	}
	if err := Check(ctx); err != nil {
		t.Errorf("Check before any notification: %v", err)
	}

	// Registration failed (e.g. NodeGetInfo on the endpoint failed).
	const why = "RegisterPlugin error -- plugin registration failed with err: connection refused"
	if _, err := c.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: why}); err != nil {
		t.Fatalf("NotifyRegistrationStatus(false): %v", err)
	}
	if reg, e := Status(); reg || e != why {
		t.Errorf("after a failure: Status() = %v, %q; want false, %q", reg, e, why)
	}
	if err := Check(ctx); err == nil || !strings.Contains(err.Error(), why) {
		t.Errorf("Check after a failure = %v, want an error quoting kubelet's", err)
	}

	// Kubelet retried and succeeded.
	if _, err := c.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatalf("NotifyRegistrationStatus(true): %v", err)
	}
	if reg, e := Status(); !reg || e != "" {
		t.Errorf("after success: Status() = %v, %q; want true, \"\"", reg, e)
	}
	if s := Current(); !s.Notified || s.Time.IsZero() {
		t.Errorf("Current() = %+v, want Notified and a time", s)
	}
	if err := Check(ctx); err != nil {
		t.Errorf("Check after success: %v", err)
	}

	// A deleted socket deregisters the driver in kubelet: Check must say so.
	if err := os.Rename(sock, sock+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := Check(ctx); err == nil {
		t.Error("Check with the socket gone: nil error")
	}
	if err := os.Rename(sock+".moved", sock); err != nil {
		t.Fatal(err)
	}

	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket still there after Serve returned (err=%v)", err)
	}
	// Serve no longer runs: no socket to check, and kubelet's last word
	// (registered) stands.
	if err := Check(ctx); err != nil {
		t.Errorf("Check after Serve returned: %v", err)
	}
}

func TestCustomVersionsAndUnixPrefix(t *testing.T) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "r.sock")
	startServe(t, Options{DriverName: testDriver, Endpoint: "unix://" + testEndpoint, SocketPath: sock, Versions: []string{"1.5.0", "1.0.0"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := dialKubelet(t, sock).GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetEndpoint() != testEndpoint {
		t.Errorf("endpoint = %q, want the unix:// prefix removed: %q", info.GetEndpoint(), testEndpoint)
	}
	if !slices.Equal(info.GetSupportedVersions(), []string{"1.5.0", "1.0.0"}) {
		t.Errorf("versions = %q", info.GetSupportedVersions())
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "r.sock")
	// A socket left by a crashed run: bound, then the listener closed
	// without unlinking.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	// Inode numbers are reused at once on some filesystems: mark the stale
	// socket by its modification time instead.
	past := time.Now().Add(-time.Hour)
	if err := os.Chtimes(sock, past, past); err != nil {
		t.Fatal(err)
	}

	startServe(t, Options{DriverName: testDriver, Endpoint: testEndpoint, SocketPath: sock})
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.ModTime().Before(past.Add(time.Minute)) {
		t.Fatal("the stale socket was not replaced")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := dialKubelet(t, sock).GetInfo(ctx, &registerapi.InfoRequest{}); err != nil {
		t.Fatalf("GetInfo on the new socket: %v", err)
	}
}

func TestSocketOfNewerInstanceKept(t *testing.T) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "r.sock")
	stop := startServe(t, Options{DriverName: testDriver, Endpoint: testEndpoint, SocketPath: sock})
	// Another instance replaces the socket while this one still runs.
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("the exiting instance removed the newer instance's socket: %v", err)
	}
}

func TestServeErrors(t *testing.T) {
	dir := shortTempDir(t)
	notSocket := filepath.Join(dir, "file.sock")
	if err := os.WriteFile(notSocket, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		opts Options
		want string
	}{
		{"no driver", Options{Endpoint: testEndpoint, SocketPath: filepath.Join(dir, "a.sock")}, "no driver name"},
		{"relative endpoint", Options{DriverName: testDriver, Endpoint: "csi.sock", SocketPath: filepath.Join(dir, "a.sock")}, "absolute path of the CSI socket"},
		{"relative socket", Options{DriverName: testDriver, Endpoint: testEndpoint, SocketPath: "a.sock"}, "must be absolute"},
		{"hidden socket", Options{DriverName: testDriver, Endpoint: testEndpoint, SocketPath: filepath.Join(dir, ".a.sock")}, "ignores names"},
		{"missing dir", Options{DriverName: testDriver, Endpoint: testEndpoint, SocketPath: filepath.Join(dir, "nope", "a.sock")}, "plugins_registry"},
		{"not a socket", Options{DriverName: testDriver, Endpoint: testEndpoint, SocketPath: notSocket}, "not a socket"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := Serve(ctx, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Serve = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if b, err := os.ReadFile(notSocket); err != nil || string(b) != "x" {
		t.Errorf("a regular file at the socket path was touched: %q, %v", b, err)
	}
}
