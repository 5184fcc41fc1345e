// Package registration registers the driver with kubelet, so that the
// DaemonSet needs no node-driver-registrar sidecar, and serves the daemon's
// /healthz, so that it needs no livenessprobe sidecar either.
//
// Kubelet watches <kubeletRootDir>/plugins_registry for unix sockets. For
// each one it finds it dials the socket, calls GetInfo to learn the plugin's
// type, name, endpoint and versions, registers the plugin (for a CSI driver:
// calls NodeGetInfo on the endpoint and adds the driver to the node's
// CSINode object), and reports the outcome with NotifyRegistrationStatus.
// When the socket disappears kubelet deregisters the plugin; when a new one
// appears (a restarted daemon) it registers it again.
//
// Serve the registration socket only once the CSI socket accepts calls:
// kubelet calls NodeGetInfo on the endpoint as soon as it sees the
// registration socket.
package registration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// DefaultVersions are the CSI versions advertised when Options.Versions is
// empty. Kubelet accepts any 1.x version.
var DefaultVersions = []string{"1.0.0"}

// stopTimeout bounds how long Serve waits for calls in flight on exit.
const stopTimeout = 5 * time.Second

// Options configures Serve.
type Options struct {
	// DriverName is the CSI driver name kubelet registers, csi.bpfmount.io.
	DriverName string
	// Endpoint is the CSI socket path as kubelet sees it (on the host), e.g.
	// /var/lib/kubelet/plugins/csi.bpfmount.io/csi.sock. A unix:// prefix is
	// removed: kubelet dials a plain path.
	Endpoint string
	// SocketPath is where to create the registration socket, in this
	// process's view, e.g. /registration/csi.bpfmount.io-reg.sock. Its
	// directory must exist (it is kubelet's plugins_registry, mounted into
	// the container), and its base name must not start with "." (kubelet
	// ignores such files).
	SocketPath string
	// Versions are the supported CSI versions; DefaultVersions when empty.
	Versions []string
}

// State is what kubelet last reported through NotifyRegistrationStatus.
type State struct {
	Notified   bool      // kubelet has called NotifyRegistrationStatus since Serve started
	Registered bool      // the last notification said the plugin is registered
	Error      string    // the error of the last notification ("" when registered)
	Time       time.Time // when the last notification arrived
	SocketPath string    // the registration socket being served ("" when Serve is not running)
}

var (
	mu    sync.Mutex
	state State
)

// Status returns whether kubelet's last notification said the driver is
// registered, and the error it reported otherwise. Before the first
// notification it returns false and "".
func Status() (registered bool, lastError string) {
	s := Current()
	return s.Registered, s.Error
}

// Current returns the full registration state.
func Current() State {
	mu.Lock()
	defer mu.Unlock()
	return state
}

// Check is a health probe for the registration: it fails when the
// registration socket served by Serve has disappeared (kubelet then
// considers the driver gone) or when kubelet's last notification reported a
// failure. It succeeds before kubelet has called at all, and when Serve is
// not running (standalone use, no kubelet).
func Check(context.Context) error {
	s := Current()
	if s.SocketPath != "" {
		fi, err := os.Lstat(s.SocketPath)
		if err != nil {
			return fmt.Errorf("registration socket: %w", err)
		}
		if fi.Mode().Type() != os.ModeSocket {
			return fmt.Errorf("registration socket %s is no longer a socket", s.SocketPath)
		}
	}
	if s.Notified && !s.Registered {
		return fmt.Errorf("kubelet failed to register the driver: %s", s.Error)
	}
	return nil
}

// Serve serves the kubelet plugin registration service on opts.SocketPath
// until ctx is done. Run one Serve per process: Status, Current and Check
// report on the most recent one. It replaces a stale socket left by an earlier run,
// creates the new one with mode 0600 (kubelet runs as root), and removes
// it on return, which makes kubelet deregister the driver until the next
// start. It returns nil when ctx ends and an error when it cannot serve.
func Serve(ctx context.Context, opts Options) error {
	info, err := opts.pluginInfo()
	if err != nil {
		return err
	}
	l, err := listen(opts.SocketPath)
	if err != nil {
		return err
	}
	defer removeSocket(opts.SocketPath, l.ino)

	mu.Lock()
	state = State{SocketPath: opts.SocketPath}
	mu.Unlock()
	defer func() {
		mu.Lock()
		state.SocketPath = ""
		mu.Unlock()
	}()

	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, &server{info: info})
	klog.InfoS("Serving kubelet plugin registration", "socket", opts.SocketPath,
		"driver", info.Name, "endpoint", info.Endpoint, "versions", info.SupportedVersions)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving kubelet plugin registration: %w", err)
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(stopTimeout):
		srv.Stop()
	}
	<-errc
	klog.InfoS("Stopped kubelet plugin registration", "socket", opts.SocketPath)
	return nil
}

func (o Options) pluginInfo() (*registerapi.PluginInfo, error) {
	if o.DriverName == "" {
		return nil, errors.New("registration: no driver name")
	}
	ep := o.Endpoint
	if rest, ok := strings.CutPrefix(ep, "unix://"); ok {
		ep = rest
	}
	if !filepath.IsAbs(ep) {
		return nil, fmt.Errorf("registration: endpoint %q: want the absolute path of the CSI socket as kubelet sees it, e.g. /var/lib/kubelet/plugins/%s/csi.sock", o.Endpoint, o.DriverName)
	}
	if !filepath.IsAbs(o.SocketPath) {
		return nil, fmt.Errorf("registration: socket path %q must be absolute", o.SocketPath)
	}
	if strings.HasPrefix(filepath.Base(o.SocketPath), ".") {
		return nil, fmt.Errorf("registration: socket path %q: kubelet ignores names starting with \".\"", o.SocketPath)
	}
	versions := o.Versions
	if len(versions) == 0 {
		versions = DefaultVersions
	}
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              o.DriverName,
		Endpoint:          filepath.Clean(ep),
		SupportedVersions: append([]string(nil), versions...),
	}, nil
}

type listener struct {
	*net.UnixListener
	ino os.FileInfo // the socket file we created, to remove only our own
}

// listen creates the socket under a hidden temporary name (kubelet ignores
// names starting with "."), sets its mode, and renames it into place, so
// kubelet never sees it with another mode and no process-wide umask change
// races with other goroutines creating files.
func listen(path string) (*listener, error) {
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("registration: directory %s does not exist: mount kubelet's plugins_registry directory there", dir)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	_ = os.Remove(tmp)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("registration: listening on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false) // the file is renamed below; Serve removes it
	fail := func(err error) (*listener, error) {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("registration: creating %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &listener{UnixListener: l, ino: fi}, nil
}

// removeStale removes a socket left at path by an earlier run. Anything
// else at path is an error: it is not ours to delete.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("registration: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("registration: %s exists and is not a socket: remove it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("registration: removing stale socket: %w", err)
	}
	klog.V(2).InfoS("Removed stale registration socket", "socket", path)
	return nil
}

// removeSocket removes path if it is still the socket this process created
// (not one a newer instance has put there meanwhile).
func removeSocket(path string, ours os.FileInfo) {
	fi, err := os.Lstat(path)
	// Inode numbers can be reused once a file is gone: compare the
	// modification time (the socket's creation time) too.
	if err != nil || !os.SameFile(fi, ours) || !fi.ModTime().Equal(ours.ModTime()) {
		return
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		klog.ErrorS(err, "Removing registration socket", "socket", path)
	}
}

type server struct {
	registerapi.UnimplementedRegistrationServer
	info *registerapi.PluginInfo
}

func (s *server) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	klog.V(4).InfoS("Kubelet asked for plugin info", "driver", s.info.Name)
	return s.info, nil
}

func (s *server) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	mu.Lock()
	state.Notified = true
	state.Registered = st.GetPluginRegistered()
	state.Error = st.GetError()
	state.Time = time.Now()
	mu.Unlock()
	if st.GetPluginRegistered() {
		klog.InfoS("Registered with kubelet", "driver", s.info.Name, "endpoint", s.info.Endpoint)
	} else {
		klog.ErrorS(errors.New(st.GetError()), "Kubelet failed to register the driver", "driver", s.info.Name,
			"endpoint", s.info.Endpoint, "hint", "check that the endpoint is the CSI socket's path on the host (--kubelet-registration-path) and that the CSI socket is serving")
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}
