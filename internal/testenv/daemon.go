package testenv

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// Daemon is the driver serving on a temporary socket in this process, with
// its pins in a private bpffs and its state in a temporary directory.
type Daemon struct {
	DaemonDirs
	Node     csi.NodeClient
	Identity csi.IdentityClient
	Driver   *driver.Driver
	Loader   *loader.Loader
	Fetcher  bytecode.Fetcher

	t      testing.TB
	conn   *grpc.ClientConn
	srv    *grpc.Server
	cancel context.CancelFunc
	done   chan struct{}
}

// DaemonOptions adjust StartDaemon.
type DaemonOptions struct {
	// Fetcher defaults to local OCI layouts only.
	Fetcher bytecode.Fetcher
	// Configure, when set, edits the driver options before start.
	Configure func(*driver.Options)
	// ConfigureLoader, when set, edits the loader options before start.
	ConfigureLoader func(*loader.Options)
	// TmpfsState puts the state directory on a tmpfs, as /run is on real
	// nodes (here /tmp is ext4 mounted with discard, where creating and
	// deleting small files can take milliseconds).
	TmpfsState bool
}

// StartDaemon starts a daemon for the test and stops it at the end. The
// test's cleanup also unmounts the private bpffs, which detaches every
// program the daemon left attached.
func StartDaemon(t testing.TB, opts DaemonOptions) *Daemon {
	t.Helper()
	d := &Daemon{t: t, DaemonDirs: newDaemonDirs(t), Fetcher: opts.Fetcher}
	if d.Fetcher == nil {
		d.Fetcher = bytecode.Layout{}
	}
	t.Cleanup(d.unmountVolumes)
	if opts.TmpfsState {
		MountTmpfs(t, d.StateDir)
	}
	d.start(opts)
	t.Cleanup(d.Stop)
	return d
}

func (d *Daemon) start(opts DaemonOptions) {
	t := d.t
	lopts := loader.Options{Root: d.BPFFSRoot, Fetcher: d.Fetcher, NodeName: "test-node"}
	if opts.ConfigureLoader != nil {
		opts.ConfigureLoader(&lopts)
	}
	ld, err := loader.New(lopts)
	if err != nil {
		t.Fatal(err)
	}
	// Tests publish below the temporary directory.
	dopts := driver.Options{NodeID: "test-node", StateDir: d.StateDir, BPFFSRoot: d.BPFFSRoot, Loader: ld, TargetRoots: []string{os.TempDir()}}
	if opts.Configure != nil {
		opts.Configure(&dopts)
	}
	drv, err := driver.New(dopts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := drv.Restore(context.Background()); err != nil {
		t.Fatalf("restoring state: %v", err)
	}
	l, err := driver.Listen(d.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := driver.NewServer(drv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		driver.Serve(ctx, srv, l)
	}()
	path, _ := driver.ParseEndpoint(d.Endpoint)
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}))
	if err != nil {
		t.Fatal(err)
	}
	d.Driver, d.Loader, d.srv, d.cancel, d.done, d.conn = drv, ld, srv, cancel, done, conn
	d.Node = csi.NewNodeClient(conn)
	d.Identity = csi.NewIdentityClient(conn)
}

// Stop stops serving and closes the loader's descriptors, as a daemon exit
// does; pinned programs stay attached. It is idempotent.
func (d *Daemon) Stop() {
	if d.cancel == nil {
		return
	}
	d.conn.Close()
	d.cancel()
	<-d.done
	d.Loader.Close()
	d.cancel = nil
}

// Restart stops the daemon and starts a new one on the same state and pins.
func (d *Daemon) Restart(opts DaemonOptions) {
	d.Stop()
	d.start(opts)
}

// Record reads a volume's record from the daemon's state directory; nil
// when the volume has none.
func (d *Daemon) Record(volumeID string) (*state.Record, error) {
	st, err := state.Open(d.StateDir)
	if err != nil {
		return nil, err
	}
	return st.Get(volumeID)
}

// DaemonDirs are where a test daemon, in this process or its own, listens,
// keeps its state and pins its programs.
type DaemonDirs struct {
	Endpoint  string // unix:// socket in a short temporary directory
	StateDir  string // in that directory
	BPFFSRoot string // in the test's private bpffs
	dir       string
}

func newDaemonDirs(t testing.TB) DaemonDirs {
	t.Helper()
	RequireRoot(t)
	dir := ShortTempDir(t)
	return DaemonDirs{
		Endpoint:  "unix://" + filepath.Join(dir, "csi.sock"),
		StateDir:  filepath.Join(dir, "state"),
		BPFFSRoot: filepath.Join(BPFFS(t), "bpfmount"),
		dir:       dir,
	}
}

// unmountVolumes unmounts whatever staging and target mounts a failed test
// left under the state directory, so the machine stays clean.
func (d DaemonDirs) unmountVolumes() {
	mounts, _ := filepath.Glob(filepath.Join(d.StateDir, "mounts", "*"))
	for _, m := range mounts {
		unmountAll(m)
	}
}

// repoRoot is the repository's top directory.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// RepoPath returns a path inside the repository.
func RepoPath(rel string) string { return filepath.Join(repoRoot(), rel) }

// MountTmpfs creates dir if needed and mounts a private tmpfs there until
// the test ends.
func MountTmpfs(t testing.TB, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700,size=64m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAll(dir) })
}
