package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// BuildDaemon builds the bpfmount binary (with extra build tags) into a
// temporary directory and returns its path.
func BuildDaemon(t testing.TB, tags string) string {
	t.Helper()
	return BuildDaemonTo(t, tags, filepath.Join(t.TempDir(), "bpfmount"))
}

// PrebuiltEnv names a directory of daemon binaries built beforehand
// (bpfmount, and bpfmount-TAGS for a build with tags): where the tests run
// without a Go toolchain, as in the VMs of `make test-vm`, BuildDaemon
// returns those instead of building.
const PrebuiltEnv = "BPFMOUNT_TEST_BINDIR"

// BuildDaemonTo builds the bpfmount binary at bin (or returns the
// prebuilt one, see PrebuiltEnv).
func BuildDaemonTo(t testing.TB, tags, bin string) string {
	t.Helper()
	if dir := os.Getenv(PrebuiltEnv); dir != "" {
		name := "bpfmount"
		if tags != "" {
			name += "-" + strings.ReplaceAll(tags, ",", "-")
		}
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s but it holds no %s: %v", PrebuiltEnv, dir, name, err)
		}
		return p
	}
	args := []string{"build", "-trimpath", "-ldflags=-s -w", "-o", bin} // as the Makefile's release build
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	cmd := exec.Command("go", append(args, "./cmd/bpfmount")...)
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the daemon: %v\n%s", err, out)
	}
	return bin
}

// ProcDaemon is the daemon running as a separate process, so a test can
// kill it with SIGKILL and start it again on the same state.
type ProcDaemon struct {
	DaemonDirs
	Bin, CacheDir, Log string
	Node               csi.NodeClient
	// Args are extra flags for `serve` (e.g. --libxdp-dir, --policy).
	Args []string

	cmd  *exec.Cmd
	conn *grpc.ClientConn
	done chan struct{}
}

// NewProcDaemon prepares directories for a daemon process; Start runs it.
// The test's cleanup kills it and unmounts whatever it left.
func NewProcDaemon(t testing.TB, bin string) *ProcDaemon {
	t.Helper()
	dirs := newDaemonDirs(t)
	p := &ProcDaemon{
		DaemonDirs: dirs,
		Bin:        bin,
		CacheDir:   filepath.Join(dirs.dir, "cache"),
		Log:        filepath.Join(dirs.dir, "daemon.log"),
	}
	MountTmpfs(t, p.StateDir) // as /run is on real nodes
	t.Cleanup(func() {
		p.Kill()
		p.unmountVolumes()
		if t.Failed() {
			if b, err := os.ReadFile(p.Log); err == nil {
				t.Logf("daemon log:\n%s", b)
			}
		}
	})
	return p
}

// Start runs the daemon with extra environment (e.g. a failpoint) and waits
// until it serves.
func (p *ProcDaemon) Start(t testing.TB, env ...string) {
	t.Helper()
	sock := p.Endpoint[len("unix://"):]
	os.Remove(sock)
	logf, err := os.OpenFile(p.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p.cmd = exec.Command(p.Bin, "serve", "--endpoint", p.Endpoint, "--node-id", "test-node",
		"--state-dir", p.StateDir, "--bpffs-root", p.BPFFSRoot, "--image-cache", p.CacheDir, "--mount-bpffs=false", "--target-root", os.TempDir(), "-v=2")
	p.cmd.Args = append(p.cmd.Args, p.Args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(p.cmd, p.done)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := DialReady(ctx, sock, p.done)
	if err != nil {
		b, _ := os.ReadFile(p.Log)
		t.Fatalf("daemon not ready: %v\n%s", err, b)
	}
	p.conn = conn
	p.Node = csi.NewNodeClient(conn)
}

// DialReady returns a client of the daemon at sock once its Probe says
// ready. It first waits, trying every millisecond, until the socket accepts
// a connection, so the gRPC client's first attempt finds it listening; the
// client it returns reconnects within 10 ms. With gRPC's default backoff a
// refused connection costs about a second, and a restart-to-ready time
// would measure that instead of the daemon.
func DialReady(ctx context.Context, sock string, exited <-chan struct{}) (*grpc.ClientConn, error) {
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			return nil, errors.New("the daemon exited")
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last connection attempt: %v)", ctx.Err(), err)
		case <-time.After(time.Millisecond):
		}
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 2 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 10 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return nil, err
	}
	id := csi.NewIdentityClient(conn)
	for {
		attempt, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		resp, err := id.Probe(attempt, &csi.ProbeRequest{}, grpc.WaitForReady(true))
		cancel()
		if err == nil && resp.GetReady().GetValue() {
			return conn, nil
		}
		select {
		case <-exited:
			conn.Close()
			return nil, errors.New("the daemon exited")
		case <-ctx.Done():
			conn.Close()
			return nil, fmt.Errorf("%w (last probe: %v)", ctx.Err(), err)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Pid is the running daemon's process ID.
func (p *ProcDaemon) Pid() int { return p.cmd.Process.Pid }

// Exited waits up to d for the process to exit by itself.
func (p *ProcDaemon) Exited(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// Kill sends SIGKILL and waits for the process to go. Idempotent.
func (p *ProcDaemon) Kill() {
	if p.cmd == nil {
		return
	}
	if p.conn != nil {
		p.conn.Close()
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p.cmd = nil
}

// Terminate sends SIGTERM and waits for a clean exit.
func (p *ProcDaemon) Terminate(t testing.TB) {
	t.Helper()
	if p.conn != nil {
		p.conn.Close()
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if !p.Exited(10 * time.Second) {
		t.Fatal("daemon did not exit within 10 s of SIGTERM")
	}
	p.cmd = nil
}

// Ctx returns a context with a timeout for one call.
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
