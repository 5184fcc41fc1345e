package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/driver/admin"
)

// fakeDaemon serves the CSI node service and the admin service on a unix
// socket and records what it is asked.
type fakeDaemon struct {
	csi.UnimplementedNodeServer
	endpoint string

	mu          sync.Mutex
	publishes   []*csi.NodePublishVolumeRequest
	unpublishes []*csi.NodeUnpublishVolumeRequest
	lists       int
	listReqs    []*admin.ListVolumesRequest
	volumes     []admin.Volume
	publishErr  error
	// unpublishErr and listErr fail those calls; publishWait, when set,
	// runs in the publish call and its error is the call's.
	unpublishErr error
	listErr      error
	publishWait  func(ctx context.Context) error
}

func (f *fakeDaemon) NodePublishVolume(ctx context.Context, r *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.publishes = append(f.publishes, r)
	if f.publishWait != nil {
		f.mu.Unlock()
		err := f.publishWait(ctx)
		f.mu.Lock()
		if err != nil {
			return nil, err
		}
	}
	if f.publishErr != nil {
		return nil, f.publishErr
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (f *fakeDaemon) NodeUnpublishVolume(_ context.Context, r *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unpublishes = append(f.unpublishes, r)
	if f.unpublishErr != nil {
		return nil, f.unpublishErr
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// ListVolumes ignores the request's filter, as a daemon predating it does.
func (f *fakeDaemon) ListVolumes(_ context.Context, req *admin.ListVolumesRequest) (*admin.ListVolumesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	f.listReqs = append(f.listReqs, req)
	if f.listErr != nil {
		return nil, f.listErr
	}
	return &admin.ListVolumesResponse{Volumes: f.volumes}, nil
}

// shortTempDir is a temporary directory short enough for a socket path.
func shortTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "bpfmount-cli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startFake serves f; withAdmin false is a daemon that predates the admin
// service.
func startFake(t *testing.T, f *fakeDaemon, withAdmin bool) *fakeDaemon {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "csi.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	csi.RegisterNodeServer(srv, f)
	if withAdmin {
		admin.Register(srv, f)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	f.endpoint = "unix://" + sock
	return f
}

// run runs the CLI with args and returns its output and error.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestPublishRequest(t *testing.T) {
	f := startFake(t, &fakeDaemon{}, true)
	target := filepath.Join(shortTempDir(t), "vol")
	out, err := run(t, "publish", "--endpoint", f.endpoint, "--target", target, "--readonly",
		"--attr", "image=oci:/srv/counter:v1", "--attr", "interface=eth0", "--attr", "globals=a=01")
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	if len(f.publishes) != 1 {
		t.Fatalf("%d publish calls, want 1", len(f.publishes))
	}
	r := f.publishes[0]
	if r.TargetPath != target || !r.Readonly || r.VolumeId != derivedVolumeID(target) {
		t.Errorf("request: target %q readonly %v volume %q; want %q true %q", r.TargetPath, r.Readonly, r.VolumeId, target, derivedVolumeID(target))
	}
	want := map[string]string{"image": "oci:/srv/counter:v1", "interface": "eth0", "globals": "a=01"}
	if !reflect.DeepEqual(r.VolumeContext, want) {
		t.Errorf("volume context %v, want %v", r.VolumeContext, want)
	}
	if r.GetVolumeCapability().GetMount() == nil ||
		r.GetVolumeCapability().GetAccessMode().GetMode() != csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER {
		t.Errorf("capability %v, want a single-node-writer mount", r.GetVolumeCapability())
	}
	if !strings.Contains(out, "published volume "+r.VolumeId+" at "+target) {
		t.Errorf("output %q", out)
	}
}

func TestPublishVolumeIDAndRelativeTarget(t *testing.T) {
	f := startFake(t, &fakeDaemon{}, true)
	dir := shortTempDir(t)
	t.Chdir(dir)
	if _, err := run(t, "publish", "--endpoint", f.endpoint, "--target", "sub/../vol", "--volume-id", "mine", "--attr", "image=x"); err != nil {
		t.Fatal(err)
	}
	if r := f.publishes[0]; r.VolumeId != "mine" || r.TargetPath != filepath.Join(dir, "vol") || r.Readonly {
		t.Errorf("request volume %q target %q readonly %v; want mine, %s, false", r.VolumeId, r.TargetPath, r.Readonly, filepath.Join(dir, "vol"))
	}
}

func TestPublishCreatesParents(t *testing.T) {
	old := syscall.Umask(0o077) // the mode must be 0755 whatever the umask
	defer syscall.Umask(old)
	f := startFake(t, &fakeDaemon{}, true)
	base := shortTempDir(t)
	target := filepath.Join(base, "run", "bpf", "counter")
	if _, err := run(t, "publish", "--endpoint", f.endpoint, "--target", target, "--attr", "image=x"); err != nil {
		t.Fatalf("publish on a missing parent: %v", err)
	}
	for _, d := range []string{filepath.Join(base, "run"), filepath.Join(base, "run", "bpf")} {
		st, err := os.Stat(d)
		if err != nil || !st.IsDir() || st.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v, %v; want a directory with mode 0755", d, st, err)
		}
	}
	if _, err := os.Lstat(target); err == nil {
		t.Errorf("the CLI created the target itself; the daemon makes it")
	}
}

func TestFailedPublishRemovesParentsItMade(t *testing.T) {
	f := startFake(t, &fakeDaemon{publishErr: status.Error(codes.InvalidArgument, `attribute "interface": no such interface`)}, true)
	base := shortTempDir(t)
	target := filepath.Join(base, "a", "b", "vol")
	_, err := run(t, "publish", "--endpoint", f.endpoint, "--target", target, "--attr", "image=x")
	if err == nil || err.Error() != `InvalidArgument: attribute "interface": no such interface` {
		t.Fatalf("err = %v, want the daemon's code and message", err)
	}
	if _, err := os.Lstat(filepath.Join(base, "a")); err == nil {
		t.Errorf("a failed publish left the parent directories it created")
	}
	if _, err := os.Lstat(base); err != nil {
		t.Errorf("removed a directory it did not create: %v", err)
	}
}

func TestPublishBadInput(t *testing.T) {
	f := startFake(t, &fakeDaemon{}, true)
	target := filepath.Join(shortTempDir(t), "x", "vol")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--attr", "novalue"}, `--attr "novalue": want key=value`},
		{[]string{"--attr", "=v"}, `want key=value`},
		{[]string{"--endpoint", "tcp://127.0.0.1:1"}, "--endpoint"},
		{[]string{"--endpoint", "unix:///nonexistent/csi.sock"}, "cannot reach the daemon at /nonexistent/csi.sock"},
	} {
		args := append([]string{"publish", "--endpoint", f.endpoint, "--target", target}, c.args...)
		_, err := run(t, args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("publish %q: err = %v, want %q", c.args, err, c.want)
		}
	}
	if _, err := run(t, "publish", "--endpoint", f.endpoint); err == nil || !strings.Contains(err.Error(), `"target" not set`) {
		t.Errorf("publish without --target: err = %v", err)
	}
	if len(f.publishes) != 0 {
		t.Errorf("bad input reached the daemon: %v", f.publishes)
	}
	if _, err := os.Lstat(filepath.Dir(target)); err == nil {
		t.Errorf("bad input created %s", filepath.Dir(target))
	}
}

func TestUnpublishFindsVolumeByTarget(t *testing.T) {
	target := filepath.Join(shortTempDir(t), "vol")
	f := startFake(t, &fakeDaemon{volumes: []admin.Volume{
		{VolumeID: "other", Target: "/elsewhere"},
		{VolumeID: "published-with-its-own-id", Target: target},
	}}, true)
	out, err := run(t, "unpublish", "--endpoint", f.endpoint, "--target", target+"/")
	if err != nil {
		t.Fatalf("unpublish: %v", err)
	}
	if len(f.unpublishes) != 1 || f.unpublishes[0].VolumeId != "published-with-its-own-id" || f.unpublishes[0].TargetPath != target {
		t.Fatalf("unpublish calls %v, want one for published-with-its-own-id at %s", f.unpublishes, target)
	}
	if !strings.Contains(out, "unpublished volume published-with-its-own-id from "+target) {
		t.Errorf("output %q", out)
	}
}

// unpublish asks only for the volumes at its target (as given and with its
// parent resolved), without usage: the daemon queries no program for it.
func TestUnpublishAsksOnlyTheTarget(t *testing.T) {
	dir := shortTempDir(t)
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	f := startFake(t, &fakeDaemon{volumes: []admin.Volume{{VolumeID: "v", Target: filepath.Join(real, "vol")}}}, true)
	if _, err := run(t, "unpublish", "--endpoint", f.endpoint, "--target", filepath.Join(dir, "link", "vol")); err != nil {
		t.Fatal(err)
	}
	if len(f.listReqs) != 1 {
		t.Fatalf("%d list calls, want 1", len(f.listReqs))
	}
	req := f.listReqs[0]
	want := []string{filepath.Join(dir, "link", "vol"), filepath.Join(real, "vol")}
	if !reflect.DeepEqual(req.Targets, want) || req.WithUsage() {
		t.Errorf("list request = targets %q, usage %v; want %q without usage", req.Targets, req.Usage, want)
	}
}

// list asks for usage only where it shows it (-o wide, -o json).
func TestListAsksUsageOnlyWhenShown(t *testing.T) {
	f := startFake(t, &fakeDaemon{volumes: testVolumes}, true)
	for _, c := range []struct {
		format string
		usage  bool
	}{{"table", false}, {"wide", true}, {"json", true}} {
		f.listReqs = nil
		if _, err := run(t, "list", "--endpoint", f.endpoint, "-o", c.format); err != nil {
			t.Fatal(err)
		}
		if len(f.listReqs) != 1 || f.listReqs[0].Usage == nil || *f.listReqs[0].Usage != c.usage || len(f.listReqs[0].Targets) != 0 {
			t.Errorf("list -o %s asked %+v; want every volume, usage %t", c.format, f.listReqs, c.usage)
		}
	}
}

func TestUnpublishUnknownTarget(t *testing.T) {
	f := startFake(t, &fakeDaemon{volumes: []admin.Volume{{VolumeID: "v", Target: "/run/bpf/a"}}}, true)
	_, err := run(t, "unpublish", "--endpoint", f.endpoint, "--target", "/run/bpf/b")
	if err == nil || !strings.Contains(err.Error(), "no volume is published at /run/bpf/b") {
		t.Fatalf("err = %v, want one naming the target", err)
	}
	if len(f.unpublishes) != 0 {
		t.Errorf("an unknown target reached NodeUnpublishVolume: %v", f.unpublishes)
	}
}

func TestUnpublishWithVolumeID(t *testing.T) {
	f := startFake(t, &fakeDaemon{}, true)
	if _, err := run(t, "unpublish", "--endpoint", f.endpoint, "--target", "/run/bpf/a", "--volume-id", "v1"); err != nil {
		t.Fatal(err)
	}
	if f.lists != 0 || len(f.unpublishes) != 1 || f.unpublishes[0].VolumeId != "v1" {
		t.Errorf("lists %d, unpublishes %v; want no list and one call for v1", f.lists, f.unpublishes)
	}
}

func TestOldDaemonWithoutAdmin(t *testing.T) {
	f := startFake(t, &fakeDaemon{}, false)
	for _, args := range [][]string{{"list"}, {"unpublish", "--target", "/run/bpf/a"}} {
		_, err := run(t, append(args, "--endpoint", f.endpoint)...)
		if err == nil || !strings.Contains(err.Error(), "cannot list volumes") || !strings.Contains(err.Error(), "upgrade it") {
			t.Errorf("%v against a daemon without the admin service: err = %v", args, err)
		}
	}
}

func ptr[T any](v T) *T { return &v }

var testVolumes = []admin.Volume{
	{
		VolumeID: "csi-0a1b", Target: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/counter/mount",
		PodNamespace: "apps", PodName: "web-0", PodUID: "u", Image: "registry.example/bpf/counter:v1",
		Digest: "sha256:0123456789abcdef0123456789abcdef", Signed: true, Program: "xdp_count", Hook: "xdp",
		Interface: "eth0", Priority: 50, XDPMode: "native", ProgramID: 42, Maps: []string{"stats", "cfg"},
		ReadOnly: true, Created: "2026-11-26T09:00:00Z",
		Attached: ptr(true), SharedBy: 2, RunCount: ptr(uint64(1000)), RunTimeNs: ptr(uint64(152000)), MapBytes: ptr(uint64(5 << 20)),
	},
	{
		VolumeID: "local-1", Target: "/run/bpf/tc", Image: "oci:/srv/tc:v1", Digest: "sha256:ff",
		Program: "tc_\tcount\n", Hook: "tcx", Direction: "ingress", Interface: "veth0", Priority: 0, ProgramID: 7,
		Attached: ptr(false), RunCount: ptr(uint64(0)), RunTimeNs: ptr(uint64(0)), MapBytes: ptr(uint64(320)), MapBytesEstimated: true,
	},
	{
		VolumeID: "z-broken", Target: "/run/bpf/old", Image: "oci:/srv/old:v1", Digest: "sha256:ee", Program: "old",
		Hook: "xdp", Interface: "eth1", Broken: "its pins were gone at start",
	},
}

func TestListFormats(t *testing.T) {
	f := startFake(t, &fakeDaemon{volumes: testVolumes}, true)

	out, err := run(t, "list", "--endpoint", f.endpoint)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("table has %d lines, want a header and 3 rows:\n%s", len(lines), out)
	}
	for _, w := range []string{"VOLUME", "POD", "PROGRAM", "HOOK", "INTERFACE", "PRIORITY", "TARGET"} {
		if !strings.Contains(lines[0], w) {
			t.Errorf("header %q lacks %s", lines[0], w)
		}
	}
	if strings.Contains(lines[0], "DIGEST") {
		t.Errorf("the default table has wide columns: %q", lines[0])
	}
	if f := strings.Fields(lines[1]); !reflect.DeepEqual(f, []string{"csi-0a1b", "apps/web-0", "xdp_count", "xdp", "eth0", "50", testVolumes[0].Target}) {
		t.Errorf("row 1 = %q", f)
	}
	// Control characters in names stay out of the table's layout.
	if f := strings.Fields(lines[2]); !reflect.DeepEqual(f, []string{"local-1", "-", "tc_?count?", "tcx/ingress", "veth0", "0", "/run/bpf/tc"}) {
		t.Errorf("row 2 = %q", f)
	}

	out, err = run(t, "list", "--endpoint", f.endpoint, "-o", "wide")
	if err != nil {
		t.Fatal(err)
	}
	lines = strings.Split(strings.TrimRight(out, "\n"), "\n")
	for _, w := range []string{"PROGRAM ID", "IMAGE", "DIGEST", "MAPS", "READ-ONLY", "RUNS", "AVG RUN", "MAP MEMORY"} {
		if !strings.Contains(lines[0], w) {
			t.Errorf("wide header %q lacks %s", lines[0], w)
		}
	}
	for _, w := range []string{" 42 ", "registry.example/bpf/counter:v1", "sha256:0123456789ab ", "stats,cfg", "true"} {
		if !strings.Contains(lines[1]+" ", w) {
			t.Errorf("wide row %q lacks %q", lines[1], w)
		}
	}
	// Runs, the average run (152 µs / 1000 runs), map memory; a program
	// that never ran has no average; an estimate says so; a broken
	// volume's program is not loaded, so nothing is known.
	for i, want := range [][]string{{"1000", "152ns", "5.0MiB"}, {"0", "-", "~320B"}, {"-", "-", "-"}} {
		f := strings.Fields(lines[i+1])
		if got := f[len(f)-3:]; !reflect.DeepEqual(got, want) {
			t.Errorf("wide row %d ends %q, want %q", i+1, got, want)
		}
	}

	out, err = run(t, "list", "--endpoint", f.endpoint, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got []admin.Volume
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("-o json is not JSON: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(got, testVolumes) {
		t.Errorf("-o json lost fields:\n got %+v\nwant %+v", got, testVolumes)
	}
}

func TestListEmptyAndBadFormat(t *testing.T) {
	f := startFake(t, &fakeDaemon{}, true)
	out, err := run(t, "list", "--endpoint", f.endpoint, "-o", "json")
	if err != nil || strings.TrimSpace(out) != "[]" {
		t.Errorf("-o json with no volumes = %q, %v; want []", out, err)
	}
	out, err = run(t, "list", "--endpoint", f.endpoint)
	if err != nil || strings.Count(out, "\n") != 1 {
		t.Errorf("table with no volumes = %q, %v; want the header only", out, err)
	}
	if _, err := run(t, "list", "--endpoint", f.endpoint, "-o", "yaml"); err == nil || !strings.Contains(err.Error(), "want table, wide or json") {
		t.Errorf("-o yaml: err = %v", err)
	}
	if f.lists != 2 {
		t.Errorf("%d list calls, want 2 (a bad -o asks nothing)", f.lists)
	}
}

func TestEndpointFromEnvironment(t *testing.T) {
	f := startFake(t, &fakeDaemon{volumes: testVolumes[:1]}, true)
	t.Setenv("BPFMOUNT_ENDPOINT", f.endpoint)
	out, err := run(t, "list")
	if err != nil || !strings.Contains(out, "csi-0a1b") {
		t.Errorf("list with $BPFMOUNT_ENDPOINT = %q, %v", out, err)
	}
}

// A target reached through a symlinked parent (/var/run -> /run) is sent
// as its real path, which the daemon records, and unpublish through the
// link finds it.
func TestTargetThroughSymlinkedParent(t *testing.T) {
	base := shortTempDir(t)
	real := filepath.Join(base, "run")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(base, "var-run")); err != nil {
		t.Fatal(err)
	}
	f := startFake(t, &fakeDaemon{volumes: []admin.Volume{{VolumeID: "v", Target: filepath.Join(real, "vol")}}}, true)
	viaLink := filepath.Join(base, "var-run", "vol")
	if _, err := run(t, "publish", "--endpoint", f.endpoint, "--target", viaLink, "--attr", "image=x"); err != nil {
		t.Fatal(err)
	}
	if got := f.publishes[0]; got.TargetPath != filepath.Join(real, "vol") || got.VolumeId != derivedVolumeID(filepath.Join(real, "vol")) {
		t.Errorf("publish sent target %q volume %q; want the real path %q and its ID", got.TargetPath, got.VolumeId, filepath.Join(real, "vol"))
	}
	if _, err := run(t, "unpublish", "--endpoint", f.endpoint, "--target", viaLink); err != nil {
		t.Fatalf("unpublish through the link: %v", err)
	}
	if len(f.unpublishes) != 1 || f.unpublishes[0].VolumeId != "v" || f.unpublishes[0].TargetPath != filepath.Join(real, "vol") {
		t.Errorf("unpublishes %v, want one for v at the recorded target", f.unpublishes)
	}
}

// A cgroup hook's volume lists its cgroup where an interface would be,
// and a cgroup_sock_addr hook its operation.
func TestListCgroupVolumes(t *testing.T) {
	vols := []admin.Volume{
		{VolumeID: "cg-1", Program: "count_skb", Hook: "cgroup_skb", Direction: "egress", Cgroup: "/sys/fs/cgroup/kubepods/pod1", Priority: 1000, Target: "/run/bpf/a"},
		{VolumeID: "cg-2", Program: "deny", Hook: "cgroup_sock_addr", AttachTo: "connect4", Cgroup: "/sys/fs/cgroup/x", Priority: 1000, Target: "/run/bpf/b"},
	}
	f := startFake(t, &fakeDaemon{volumes: vols}, true)
	out, err := run(t, "list", "--endpoint", f.endpoint)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("table:\n%s", out)
	}
	if f := strings.Fields(lines[1]); !reflect.DeepEqual(f, []string{"cg-1", "-", "count_skb", "cgroup_skb/egress", "cgroup:/sys/fs/cgroup/kubepods/pod1", "1000", "/run/bpf/a"}) {
		t.Errorf("row 1 = %q", f)
	}
	if f := strings.Fields(lines[2]); !reflect.DeepEqual(f, []string{"cg-2", "-", "deny", "cgroup_sock_addr/connect4", "cgroup:/sys/fs/cgroup/x", "1000", "/run/bpf/b"}) {
		t.Errorf("row 2 = %q", f)
	}
}

// Each call's failure reaches the user as the daemon's code and message,
// exactly, whatever bytes the message holds (gRPC percent-encodes some on
// the wire).
func TestDaemonErrorsKeepCodeAndMessage(t *testing.T) {
	for _, c := range []struct {
		code codes.Code
		msg  string
	}{
		{codes.InvalidArgument, `attribute "priority": want a number from 1 to 1000, got "x"`},
		{codes.NotFound, "image oci:/srv/ünïcode:v1 not found: 100% sure\n(second line)"},
		{codes.PermissionDenied, "policy: image registry.example/x is not allowed for local requests"},
		{codes.Unavailable, `no program is loaded under name "x" on this node`},
		{codes.Internal, ""},
	} {
		want := c.code.String() + ": " + c.msg
		target := filepath.Join(shortTempDir(t), "vol")
		f := startFake(t, &fakeDaemon{
			publishErr: status.Error(c.code, c.msg), unpublishErr: status.Error(c.code, c.msg), listErr: status.Error(c.code, c.msg),
			volumes: []admin.Volume{{VolumeID: "v", Target: target}},
		}, true)
		for _, args := range [][]string{
			{"publish", "--target", target, "--attr", "image=x"},
			{"unpublish", "--target", target, "--volume-id", "v"},
			{"unpublish", "--target", target}, // fails at its list call
			{"list"},
		} {
			if _, err := run(t, append(args, "--endpoint", f.endpoint)...); err == nil || err.Error() != want {
				t.Errorf("%v: err = %v\n want %s", args, err, want)
			}
		}
	}
}

// A list far over HTTP/2's initial 64 KiB flow-control windows arrives
// whole.
func TestListLargeResponse(t *testing.T) {
	var vols []admin.Volume
	for i := range 2000 {
		vols = append(vols, admin.Volume{
			VolumeID: fmt.Sprintf("csi-%04d", i), Target: fmt.Sprintf("/var/lib/kubelet/pods/%04d/volumes/kubernetes.io~csi/counter/mount", i),
			Image: "registry.example/bpf/counter:v1", Digest: "sha256:0123456789abcdef", Program: "xdp_count", Hook: "xdp",
			Interface: "eth0", Maps: []string{"stats"}, ProgramID: uint32(i),
		})
	}
	if b, _ := json.Marshal(vols); len(b) < 4*65536 {
		t.Fatalf("the list is only %d bytes", len(b))
	}
	f := startFake(t, &fakeDaemon{volumes: vols}, true)
	out, err := run(t, "list", "--endpoint", f.endpoint, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got []admin.Volume
	if err := json.Unmarshal([]byte(out), &got); err != nil || !reflect.DeepEqual(got, vols) {
		t.Errorf("list -o json: %d volumes, %v; want all %d", len(got), err, len(vols))
	}
}

// --timeout bounds a call: the daemon sees the deadline, the user gets
// DeadlineExceeded, and the publish leaves no directory behind.
func TestTimeout(t *testing.T) {
	var seen atomic.Int64
	f := startFake(t, &fakeDaemon{publishWait: func(ctx context.Context) error {
		if d, ok := ctx.Deadline(); ok {
			seen.Store(int64(time.Until(d)))
		}
		<-ctx.Done()
		// What a daemon's call does when its context ends; the client's
		// own deadline may fire first or not, the user sees the same.
		return status.FromContextError(ctx.Err()).Err()
	}}, true)
	base := shortTempDir(t)
	_, err := run(t, "publish", "--endpoint", f.endpoint, "--timeout", "1s", "--target", filepath.Join(base, "a", "vol"), "--attr", "image=x")
	if err == nil || err.Error() != "DeadlineExceeded: context deadline exceeded" {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Duration(seen.Load()); d <= 0 || d > time.Second {
		t.Errorf("the daemon saw a deadline %v away, want one within --timeout", d)
	}
	if _, err := os.Lstat(filepath.Join(base, "a")); err == nil {
		t.Errorf("a publish that timed out left the parent directory it created")
	}
}

// An endpoint where no gRPC server answers is an error naming it.
func TestEndpointNotAGRPCServer(t *testing.T) {
	dir := shortTempDir(t)
	h1sock := filepath.Join(dir, "http.sock")
	l, err := net.Listen("unix", h1sock)
	if err != nil {
		t.Fatal(err)
	}
	h1 := &http.Server{Handler: http.NotFoundHandler()}
	go h1.Serve(l)
	t.Cleanup(func() { h1.Close() })

	// A socket nobody listens on any more (a daemon that died).
	stale := filepath.Join(dir, "stale.sock")
	sl, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	sl.SetUnlinkOnClose(false)
	sl.Close()

	for _, c := range []struct {
		sock string
		want []string
	}{
		{h1sock, []string{"Unavailable: the connection to the server at " + h1sock + " failed", "is it a gRPC server?"}},
		{stale, []string{"Unavailable: cannot connect to the server at " + stale, "connection refused", "is it running?"}},
	} {
		for _, args := range [][]string{{"list"}, {"publish", "--target", filepath.Join(dir, "vol"), "--attr", "image=x"}, {"unpublish", "--target", filepath.Join(dir, "vol")}} {
			_, err := run(t, append(args, "--endpoint", "unix://"+c.sock, "--timeout", "10s")...)
			for _, w := range c.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("%v against %s: err = %v, want %q", args, filepath.Base(c.sock), err, w)
				}
			}
		}
	}
}
