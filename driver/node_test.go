package driver

// These tests run the Node service on a bare Driver with fakes for the
// loader, the state store and the mounts: no root, no kernel, no files.

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver/events"
	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/internal/mapfs"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// fakeLoader resolves every image to one program and keeps the owners of
// each acquired key, so a test can see an acquire without its release.
type fakeLoader struct {
	mu        sync.Mutex
	imageHook loader.Hook // the hook the image's labels name
	// imageAttachTo is the attachTo the object's section names, used
	// when the request names none (cgroup_sock_addr's operation).
	imageAttachTo string
	signed        bool
	resolveErr    error
	acquireErr    error
	resolves      int
	acquires      int
	held          map[string]map[string]bool // key -> owners
}

func newFakeLoader() *fakeLoader {
	return &fakeLoader{imageHook: loader.HookXDP, held: map[string]map[string]bool{}}
}

func (f *fakeLoader) Resolve(_ context.Context, req loader.Request) (*loader.Resolved, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resolves++
	if f.resolveErr != nil {
		return nil, f.resolveErr
	}
	hook := req.Hook
	if hook == "" {
		hook = f.imageHook
	}
	attachTo := req.AttachTo
	if attachTo == "" {
		attachTo = f.imageAttachTo
	}
	prio := req.Priority
	if prio == 0 && !loader.IsTracing(hook) {
		prio = loader.DefaultPriority // as the loader's Resolve
	}
	return &loader.Resolved{
		Identity: loader.Identity{Digest: "sha256:" + req.Image.Reference, Program: "prog", Hook: hook,
			Interface: req.Interface, Cgroup: req.Cgroup, AttachTo: attachTo, Direction: req.Direction, Priority: prio},
		Image: &bytecode.Image{Reference: req.Image.Reference, Signed: f.signed},
		Maps:  []string{"counts", "events"},
	}, nil
}

func (f *fakeLoader) Acquire(_ context.Context, r *loader.Resolved, owner string) (*loader.Program, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acquires++
	if f.acquireErr != nil {
		return nil, f.acquireErr
	}
	key := r.Identity.Key()
	if f.held[key] == nil {
		f.held[key] = map[string]bool{}
	}
	f.held[key][owner] = true
	return &loader.Program{Identity: r.Identity, Key: key, ID: 7,
		Maps: map[string]*ebpf.Map{"counts": nil, "events": nil}}, nil
}

func (f *fakeLoader) Release(key, owner string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.held[key], owner)
	if len(f.held[key]) == 0 {
		delete(f.held, key)
	}
	return nil
}

func (f *fakeLoader) owners() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, o := range f.held {
		n += len(o)
	}
	return n
}

func (f *fakeLoader) Adopt(loader.Identity, string) (*loader.Program, error) {
	return nil, fault.Errorf(fault.NotFound, "no pins")
}
func (f *fakeLoader) Prune(...string) ([]string, error)                            { return nil, nil }
func (f *fakeLoader) Programs() []*loader.Program                                  { return nil }
func (f *fakeLoader) Chains() []loader.ChainStat                                   { return nil }
func (f *fakeLoader) WatchInterfaces(context.Context, func(*loader.Program)) error { return nil }

// fakeStore keeps records and intents in memory.
type fakeStore struct {
	mu           sync.Mutex
	records      map[string]*state.Record
	intents      map[string]*state.Intent
	putErr       error
	putIntentErr error
	lists        int
	lingers      map[string]*state.Linger      // lifetime_test.go
	nodeProgs    map[string]*state.NodeProgram // lifetime_test.go
	upgrades     map[string]*state.Upgrade     // lifetime_test.go
}

func newFakeStore() *fakeStore {
	return &fakeStore{records: map[string]*state.Record{}, intents: map[string]*state.Intent{}}
}

func (s *fakeStore) Get(id string) (*state.Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.records[id], nil
}

func (s *fakeStore) Put(r *state.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.putErr != nil {
		return s.putErr
	}
	s.records[r.VolumeID] = r
	return nil
}

func (s *fakeStore) Delete(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, id)
	return nil
}

func (s *fakeStore) List() ([]*state.Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lists++
	return slices.Collect(maps.Values(s.records)), nil
}

func (s *fakeStore) PutIntent(in *state.Intent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.putIntentErr != nil {
		return s.putIntentErr
	}
	s.intents[in.VolumeID] = in
	return nil
}

func (s *fakeStore) DeleteIntent(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.intents, id)
	return nil
}

func (s *fakeStore) Intents() ([]*state.Intent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Values(s.intents)), nil
}

func (s *fakeStore) StagingPath(id string) string { return "/state/mounts/" + id }
func (s *fakeStore) MountsDir() string            { return "/state/mounts" }

// fakeMounts keeps what is mounted where.
type fakeMounts struct {
	mu        sync.Mutex
	mounts    map[string]mapfs.Mount
	exposeErr error
	openErr   error // OpenTarget's answer when set
	opened    int   // targets opened
	devs      int
}

func newFakeMounts() *fakeMounts { return &fakeMounts{mounts: map[string]mapfs.Mount{}} }

func (m *fakeMounts) OpenTarget(path string, roots []string) (*mapfs.Target, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.opened++
	if m.openErr != nil {
		return nil, m.openErr
	}
	return &mapfs.Target{Path: path}, nil
}

func (m *fakeMounts) Expose(staging string, t *mapfs.Target, _ map[string]*ebpf.Map, opts mapfs.Options) (mapfs.Made, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.exposeErr != nil {
		return mapfs.Made{}, m.exposeErr
	}
	m.devs++
	mt := mapfs.Mount{Mounted: true, FSType: "bpf", Dev: fmt.Sprintf("0:%d", m.devs), ReadOnly: opts.ReadOnly, SuperReadOnly: opts.ReadOnly}
	m.mounts[staging], m.mounts[t.Path] = mt, mt
	return mapfs.Made{}, nil
}

// Withdraw removes, like mapfs.Withdraw, only the volume's own mounts: the
// target only when it is bound from the staging mount.
func (m *fakeMounts) Withdraw(staging, target string, _ mapfs.Made) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if staging == "" {
		return nil
	}
	if st, tm := m.mounts[staging], m.mounts[target]; st.Mounted && tm.Mounted && st.Dev == tm.Dev {
		delete(m.mounts, target)
	}
	delete(m.mounts, staging)
	return nil
}

func (m *fakeMounts) Inspect(dir string) (mapfs.Mount, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mounts[dir], nil
}

func (m *fakeMounts) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.mounts)
}

type fakes struct {
	d      *Driver
	loader *fakeLoader
	store  *fakeStore
	mounts *fakeMounts
}

func newTestDriver(t *testing.T, pol *policy.Policy) *fakes {
	t.Helper()
	f := &fakes{loader: newFakeLoader(), store: newFakeStore(), mounts: newFakeMounts()}
	opts := Options{NodeID: "node-1", StateDir: "/state", BPFFSRoot: "/sys/fs/bpf/bpfmount"}
	if pol != nil {
		opts.Policy = policy.Static(pol)
	}
	d, err := newDriver(opts, f.loader, f.store, f.mounts)
	if err != nil {
		t.Fatal(err)
	}
	f.d = d
	return f
}

// assertNothingLeft checks that a failed publish left no trace.
func (f *fakes) assertNothingLeft(t *testing.T) {
	t.Helper()
	if n := f.loader.owners(); n != 0 {
		t.Errorf("%d acquires without release", n)
	}
	if n := f.mounts.count(); n != 0 {
		t.Errorf("%d mounts left: %v", n, f.mounts.mounts)
	}
	if n := len(f.store.records); n != 0 {
		t.Errorf("%d records left", n)
	}
	if n := len(f.store.intents); n != 0 {
		t.Errorf("%d intents left", n)
	}
}

const testTarget = "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/v/mount"

func localAttrs() map[string]string {
	return map[string]string{AttrImage: "registry.example/bpf/counter:v1", AttrInterface: "eth0"}
}

func podAttrs(ns string) map[string]string {
	a := localAttrs()
	a[keyPodNamespace], a[keyPodName], a[keyPodUID], a[keyServiceAccount] = ns, "pod-1", "uid-1", "default"
	return a
}

func publishReq(vol, target string, attrs map[string]string) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{
		VolumeId: vol, TargetPath: target, VolumeContext: attrs,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
	}
}

func unpublishReq(vol, target string) *csi.NodeUnpublishVolumeRequest {
	return &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target}
}

func mustPolicy(t *testing.T, doc string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte("apiVersion: bpfmount.io/v1alpha1\nkind: NodePolicy\n" + doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func wantCode(t *testing.T, err error, code codes.Code, fragment string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want %s", err, code)
	}
	if _, ok := status.FromError(err); !ok {
		t.Fatalf("%v is not a gRPC status", err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, fragment) {
		t.Fatalf("message %q does not contain %q", msg, fragment)
	}
}

func TestPublishArgumentChecks(t *testing.T) {
	edit := func(fn func(r *csi.NodePublishVolumeRequest)) *csi.NodePublishVolumeRequest {
		r := publishReq("vol-1", testTarget, localAttrs())
		fn(r)
		return r
	}
	withAttrs := func(kv ...string) *csi.NodePublishVolumeRequest {
		a := localAttrs()
		for i := 0; i < len(kv); i += 2 {
			a[kv[i]] = kv[i+1]
		}
		return publishReq("vol-1", testTarget, a)
	}
	many := localAttrs()
	many[keyPodNamespace] = "web"
	for i := range 100 {
		many[fmt.Sprintf("%sextra-%d", kubeletPrefix, i)] = "x"
	}
	cases := []struct {
		name     string
		req      *csi.NodePublishVolumeRequest
		fragment string
	}{
		{"no volume id", edit(func(r *csi.NodePublishVolumeRequest) { r.VolumeId = "" }), "volume_id is required"},
		{"unsafe volume id", edit(func(r *csi.NodePublishVolumeRequest) { r.VolumeId = "../etc" }), "not a safe name"},
		{"no target", edit(func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "" }), "target_path is required"},
		{"relative target", edit(func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "a/b" }), "absolute, clean"},
		{"target in state dir", edit(func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "/state/volumes" }), "overlaps"},
		{"target above bpffs root", edit(func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "/sys/fs" }), "overlaps"},
		{"no capability", edit(func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = nil }), "volume_capability is required"},
		{"block", edit(func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		}), "block volumes"},
		{"mount flags", edit(func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().MountFlags = []string{"exec"} }), "mount flags"},
		{"mount group", edit(func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().VolumeMountGroup = "wheel" }), "numeric group"},
		{"multi node", edit(func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessMode.Mode = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
		}), "SINGLE_NODE"},
		{"wrong secret", edit(func(r *csi.NodePublishVolumeRequest) { r.Secrets = map[string]string{"password": "x"} }), "dockerconfigjson"},
		{"unknown attribute", withAttrs("colour", "red"), "unknown volume attribute"},
		{"bad type", withAttrs(AttrType, "raw_tracepoint"), "not a supported type"},
		{"half a pod's request", withAttrs(keyPodName, "p", keyPodUID, "u", kubeletPrefix+"ephemeral", "true"), "must name its namespace"},
		{"too many keys", publishReq("vol-1", testTarget, many), "more than the 64 allowed"},
		{"too many bytes", withAttrs(keyPodNamespace, "web", keyPodName, strings.Repeat("p", 4096),
			keyPodUID, strings.Repeat("u", 4096), keyServiceAccount, strings.Repeat("s", 4096), kubeletPrefix+"x", strings.Repeat("x", 4096)),
			"more than the 16384 allowed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newTestDriver(t, nil)
			_, err := f.d.NodePublishVolume(context.Background(), c.req)
			wantCode(t, err, codes.InvalidArgument, c.fragment)
			if f.loader.resolves != 0 {
				t.Fatal("a bad request reached the loader")
			}
			f.assertNothingLeft(t)
		})
	}

	f := newTestDriver(t, nil)
	for name, req := range map[string]*csi.NodeUnpublishVolumeRequest{
		"no volume id": unpublishReq("", testTarget), "unsafe volume id": unpublishReq("a/b", testTarget),
		"no target": unpublishReq("vol-1", ""), "unclean target": unpublishReq("vol-1", "/a/../b"),
	} {
		if _, err := f.d.NodeUnpublishVolume(context.Background(), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("unpublish %s: got %v, want InvalidArgument", name, err)
		}
	}
}

func TestBusyVolumeIsAborted(t *testing.T) {
	f := newTestDriver(t, nil)
	unlock, ok := f.d.locks.tryLock("vol-1")
	if !ok {
		t.Fatal("lock not free")
	}
	_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, localAttrs()))
	wantCode(t, err, codes.Aborted, "already in progress")
	_, err = f.d.NodeUnpublishVolume(context.Background(), unpublishReq("vol-1", testTarget))
	wantCode(t, err, codes.Aborted, "already in progress")
	f.assertNothingLeft(t)
	unlock()
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, localAttrs())); err != nil {
		t.Fatalf("after the lock is free: %v", err)
	}
}

func TestFaultKindToCode(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range []struct {
		err  error
		code codes.Code
	}{
		{fault.Errorf(fault.Invalid, "x"), codes.InvalidArgument},
		{fault.Errorf(fault.NotFound, "x"), codes.NotFound},
		{fault.Errorf(fault.Precondition, "x"), codes.FailedPrecondition},
		{fault.Errorf(fault.Exhausted, "x"), codes.ResourceExhausted},
		{fault.Errorf(fault.Unavailable, "x"), codes.Unavailable},
		{fault.Errorf(fault.PermissionDenied, "x"), codes.PermissionDenied},
		{fault.Errorf(fault.Canceled, "x"), codes.Canceled},
		{fault.Errorf(fault.AlreadyExists, "x"), codes.AlreadyExists},
		{fault.Errorf(fault.Aborted, "x"), codes.Aborted},
		{fault.Errorf(fault.Internal, "x"), codes.Internal},
		{errors.New("plain"), codes.Internal},
		{fmt.Errorf("wrapped: %w", fault.Errorf(fault.NotFound, "x")), codes.NotFound},
		{ctx.Err(), codes.Canceled},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{fmt.Errorf("fetching: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{invalid("bad %s", "thing"), codes.InvalidArgument},
	} {
		st := toStatus(c.err)
		if status.Code(st) != c.code || status.Convert(st).Message() != c.err.Error() {
			t.Errorf("toStatus(%v) = %v, want code %s and the error's message", c.err, st, c.code)
		}
	}
	if toStatus(nil) != nil {
		t.Error("toStatus(nil) is not nil")
	}
	// Every kind has its code: a new kind without one would be Internal.
	for k := fault.Internal; k <= fault.Aborted; k++ {
		if _, ok := faultCodes[k]; !ok {
			t.Errorf("fault kind %v has no gRPC code", k)
		}
	}

	// Errors from the loader come through with their kind's code.
	f := newTestDriver(t, nil)
	f.loader.resolveErr = fault.Errorf(fault.NotFound, "image %q not found", "x")
	_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, localAttrs()))
	wantCode(t, err, codes.NotFound, "not found")
	f.loader.resolveErr = nil
	f.loader.acquireErr = fault.Errorf(fault.Exhausted, "dispatcher full")
	_, err = f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, localAttrs()))
	wantCode(t, err, codes.ResourceExhausted, "dispatcher full")
}

// The policy decides before anything is fetched, on what the request says,
// and again once the image names the hook.
func TestPolicyBeforeFetch(t *testing.T) {
	pol := mustPolicy(t, `rules:
- name: web-xdp
  namespaces: ["web"]
  images: ["registry.example/bpf/*"]
  hooks: ["xdp"]
- name: lab-tcx
  namespaces: ["lab"]
  images: ["registry.example/bpf/*"]
  hooks: ["tcx"]
- name: ro
  namespaces: ["ro"]
  images: ["registry.example/bpf/*"]
  readOnlyOnly: true
`)
	with := func(a map[string]string, kv ...string) map[string]string {
		for i := 0; i < len(kv); i += 2 {
			a[kv[i]] = kv[i+1]
		}
		return a
	}
	cases := []struct {
		name     string
		attrs    map[string]string
		code     codes.Code
		fragment string
		resolves int
	}{
		{"no rule for the namespace, no type", podAttrs("other"), codes.PermissionDenied, "no rule matches", 0},
		{"no rule for the namespace, registry down", podAttrs("other"), codes.PermissionDenied, "no rule matches", 0},
		{"image not allowed, no type", with(podAttrs("web"), AttrImage, "evil.example/x:1"), codes.PermissionDenied, `allows images`, 0},
		{"local layout not allowed", with(podAttrs("web"), AttrImage, "oci:/etc/passwd"), codes.PermissionDenied, `oci:`, 0},
		{"priority given", with(podAttrs("web"), AttrPriority, "5"), codes.OK, "", 1},
		{"hook named and denied", with(podAttrs("web"), AttrType, "tcx", AttrDirection, "ingress"), codes.PermissionDenied, `allows hooks`, 0},
		{"read-only rule, read-write volume", podAttrs("ro"), codes.PermissionDenied, "read-only", 0},
		{"hook from the image, allowed", podAttrs("web"), codes.OK, "", 1},
		{"hook from the image, denied after the fetch", podAttrs("lab"), codes.PermissionDenied, `allows hooks ["tcx"] only, not "xdp"`, 1},
		{"local request", localAttrs(), codes.OK, "", 1},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newTestDriver(t, pol)
			if strings.Contains(c.name, "registry down") {
				f.loader.resolveErr = fault.Errorf(fault.Unavailable, "registry unreachable")
			}
			_, err := f.d.NodePublishVolume(context.Background(), publishReq(fmt.Sprintf("vol-%d", i), testTarget, c.attrs))
			if c.code == codes.OK {
				if err != nil {
					t.Fatal(err)
				}
			} else {
				wantCode(t, err, c.code, c.fragment)
				f.assertNothingLeft(t)
			}
			if f.loader.resolves != c.resolves {
				t.Fatalf("the image was fetched %d times, want %d", f.loader.resolves, c.resolves)
			}
		})
	}
}

func TestPolicyRequiresSignature(t *testing.T) {
	pol := mustPolicy(t, `rules:
- name: signed
  namespaces: ["web"]
  images: ["registry.example/bpf/*"]
  requireSignature: true
`)
	f := newTestDriver(t, pol)
	_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, podAttrs("web")))
	wantCode(t, err, codes.PermissionDenied, "requires a signature")
	f.assertNothingLeft(t)
	f.loader.signed = true
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, podAttrs("web"))); err != nil {
		t.Fatal(err)
	}
}

func TestPublishIdempotency(t *testing.T) {
	ctx := context.Background()
	publish := func(f *fakes, vol, target string, attrs map[string]string) error {
		_, err := f.d.NodePublishVolume(ctx, publishReq(vol, target, attrs))
		return err
	}

	t.Run("same request again", func(t *testing.T) {
		f := newTestDriver(t, nil)
		for range 2 {
			if err := publish(f, "vol-1", testTarget, localAttrs()); err != nil {
				t.Fatal(err)
			}
		}
		if f.loader.acquires != 1 || f.loader.resolves != 1 {
			t.Fatalf("acquired %d and resolved %d times, want once", f.loader.acquires, f.loader.resolves)
		}
	})
	t.Run("different attributes at the same target", func(t *testing.T) {
		f := newTestDriver(t, nil)
		if err := publish(f, "vol-1", testTarget, localAttrs()); err != nil {
			t.Fatal(err)
		}
		a := localAttrs()
		a[AttrPriority] = "10"
		wantCode(t, publish(f, "vol-1", testTarget, a), codes.AlreadyExists, "different attributes")
		if f.loader.acquires != 1 {
			t.Fatal("the conflicting request acquired a program")
		}
	})
	t.Run("read-only flag differs", func(t *testing.T) {
		f := newTestDriver(t, nil)
		if err := publish(f, "vol-1", testTarget, localAttrs()); err != nil {
			t.Fatal(err)
		}
		req := publishReq("vol-1", testTarget, localAttrs())
		req.Readonly = true
		_, err := f.d.NodePublishVolume(ctx, req)
		wantCode(t, err, codes.AlreadyExists, "read-only")
	})
	t.Run("same volume at another target", func(t *testing.T) {
		f := newTestDriver(t, nil)
		if err := publish(f, "vol-1", testTarget, localAttrs()); err != nil {
			t.Fatal(err)
		}
		wantCode(t, publish(f, "vol-1", testTarget+"2", localAttrs()), codes.FailedPrecondition, "already published at")
	})
	t.Run("foreign filesystem at the target", func(t *testing.T) {
		f := newTestDriver(t, nil)
		f.mounts.mounts[testTarget] = mapfs.Mount{Mounted: true, FSType: "tmpfs", Dev: "0:99"}
		wantCode(t, publish(f, "vol-1", testTarget, localAttrs()), codes.FailedPrecondition, "tmpfs")
		if f.loader.resolves != 0 || len(f.store.records) != 0 {
			t.Fatal("a foreign mount did not stop the publish")
		}
	})
	t.Run("another bpf filesystem at the target", func(t *testing.T) {
		f := newTestDriver(t, nil)
		f.mounts.mounts[testTarget] = mapfs.Mount{Mounted: true, FSType: "bpf", Dev: "0:99"}
		wantCode(t, publish(f, "vol-1", testTarget, localAttrs()), codes.AlreadyExists, "another bpf filesystem")
	})
	t.Run("another volume's target", func(t *testing.T) {
		f := newTestDriver(t, nil)
		if err := publish(f, "vol-1", testTarget, localAttrs()); err != nil {
			t.Fatal(err)
		}
		wantCode(t, publish(f, "vol-2", testTarget, localAttrs()), codes.AlreadyExists, "another bpf filesystem")
	})
	t.Run("record without its mounts", func(t *testing.T) {
		f := newTestDriver(t, nil)
		if err := publish(f, "vol-1", testTarget, localAttrs()); err != nil {
			t.Fatal(err)
		}
		delete(f.mounts.mounts, testTarget) // unmounted by hand
		if err := publish(f, "vol-1", testTarget, localAttrs()); err != nil {
			t.Fatal(err)
		}
		if f.loader.acquires != 2 || f.loader.owners() != 1 || f.mounts.count() != 2 || len(f.store.records) != 1 {
			t.Fatalf("not published afresh: acquires %d, owners %d, mounts %d", f.loader.acquires, f.loader.owners(), f.mounts.count())
		}
	})
}

// Every failure in the node-changing part undoes what was done.
func TestPublishRollback(t *testing.T) {
	boom := errors.New("boom")
	for _, c := range []struct {
		name  string
		setup func(f *fakes)
		code  codes.Code
	}{
		{"intent write fails", func(f *fakes) { f.store.putIntentErr = boom }, codes.Internal},
		{"acquire fails", func(f *fakes) { f.loader.acquireErr = fault.Errorf(fault.Precondition, "interface busy") }, codes.FailedPrecondition},
		{"expose fails", func(f *fakes) { f.mounts.exposeErr = boom }, codes.Internal},
		{"record write fails", func(f *fakes) { f.store.putErr = boom }, codes.Internal},
		{"maps not in the image", func(f *fakes) {}, codes.InvalidArgument},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newTestDriver(t, nil)
			c.setup(f)
			attrs := localAttrs()
			if c.code == codes.InvalidArgument {
				attrs[AttrMaps] = "secret"
			}
			_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, attrs))
			if status.Code(err) != c.code {
				t.Fatalf("got %v, want %s", err, c.code)
			}
			f.assertNothingLeft(t)
			if got := f.d.store.count(); got != 0 {
				t.Fatalf("%d volumes counted after a failed publish", got)
			}
		})
	}
}

func TestUnpublish(t *testing.T) {
	ctx := context.Background()
	f := newTestDriver(t, nil)
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, localAttrs())); err != nil {
		t.Fatal(err)
	}
	for range 2 { // idempotent
		if _, err := f.d.NodeUnpublishVolume(ctx, unpublishReq("vol-1", testTarget)); err != nil {
			t.Fatal(err)
		}
	}
	f.assertNothingLeft(t)

	// The fake's foreign filesystem at an unknown volume's target is left
	// alone. (What the host has mounted at such a target is judged by
	// mapfs.WithdrawOrphan, on the real mount table: tested there and in
	// test/integration.)
	f.mounts.mounts[testTarget] = mapfs.Mount{Mounted: true, FSType: "tmpfs", Dev: "0:99"}
	if _, err := f.d.NodeUnpublishVolume(ctx, unpublishReq("vol-2", testTarget)); err != nil {
		t.Fatalf("unpublish of an unknown volume at a foreign mount: %v, want OK", err)
	}
	if !f.mounts.mounts[testTarget].Mounted {
		t.Fatal("a foreign mount was removed")
	}
}

// The gauges and the image cache's in-use check read counts kept in
// memory: no record is read from the store after the driver starts.
func TestVolumeCountsInMemory(t *testing.T) {
	ctx := context.Background()
	f := newTestDriver(t, nil)
	img := func(name string) map[string]string {
		a := localAttrs()
		a[AttrImage] = "registry.example/bpf/" + name
		return a
	}
	for i, name := range []string{"a", "a", "b"} {
		vol := fmt.Sprintf("vol-%d", i)
		if _, err := f.d.NodePublishVolume(ctx, publishReq(vol, testTarget+vol, img(name))); err != nil {
			t.Fatal(err)
		}
	}
	lists := f.store.lists
	want := map[string]bool{"sha256:registry.example/bpf/a": true, "sha256:registry.example/bpf/b": true}
	if got := f.d.DigestsInUse(); !maps.Equal(got, want) {
		t.Fatalf("DigestsInUse = %v, want %v", got, want)
	}
	if got := f.d.metricsState().Volumes; got != 3 {
		t.Fatalf("volumes = %d, want 3", got)
	}
	for _, vol := range []string{"vol-0", "vol-2"} {
		if _, err := f.d.NodeUnpublishVolume(ctx, unpublishReq(vol, testTarget+vol)); err != nil {
			t.Fatal(err)
		}
	}
	want = map[string]bool{"sha256:registry.example/bpf/a": true}
	if got := f.d.DigestsInUse(); !maps.Equal(got, want) {
		t.Fatalf("after unpublish, DigestsInUse = %v, want %v", got, want)
	}
	if got := f.d.metricsState().Volumes; got != 1 {
		t.Fatalf("after unpublish, volumes = %d, want 1", got)
	}
	if f.store.lists != lists {
		t.Fatalf("the store was listed %d times after start", f.store.lists-lists)
	}

	// A restarted driver counts the records it finds.
	d2, err := newDriver(f.d.opts, f.loader, f.store, f.mounts)
	if err != nil {
		t.Fatal(err)
	}
	if got := d2.DigestsInUse(); !maps.Equal(got, want) || d2.metricsState().Volumes != 1 {
		t.Fatalf("after restart: digests %v, volumes %d", got, d2.metricsState().Volumes)
	}
}

// labelValues gathers the values each label of c takes.
func labelValues(t *testing.T, c prometheus.Collector) map[string][]string {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				out[lp.GetName()] = append(out[lp.GetName()], lp.GetValue())
			}
		}
	}
	return out
}

// No text a request chose becomes a metric label value.
func TestMetricLabelsFromClosedSets(t *testing.T) {
	pol := mustPolicy(t, `rules:
- name: web
  namespaces: ["web", "net-*"]
  images: ["registry.example/bpf/*"]
`)
	metrics.PublishDuration.Reset()
	metrics.UnpublishDuration.Reset()
	metrics.PolicyDenials.Reset()
	f := newTestDriver(t, pol)
	ctx := context.Background()
	for i := range 20 {
		a := localAttrs()
		a[AttrType] = fmt.Sprintf("hostile-%d", i)
		f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, a))
		f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, podAttrs(fmt.Sprintf("hostile-ns-%d", i))))
		f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, podAttrs(fmt.Sprintf("net-%d", i))))
	}
	f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, podAttrs("web"))) // allowed
	a := podAttrs("web")
	a[AttrImage] = "evil.example/x"
	f.d.NodePublishVolume(ctx, publishReq("vol-2", testTarget+"2", a)) // denied, named namespace
	f.d.NodeUnpublishVolume(ctx, unpublishReq("vol-1", testTarget))

	hooks := []string{"xdp", "tc", "tcx", "unknown", "invalid"}
	if got := labelValues(t, metrics.PublishDuration)["hook"]; !slices.Contains(got, "invalid") {
		t.Errorf("hook labels %v: a request with an unknown type is not counted as invalid", got)
	}
	for _, h := range []*prometheus.HistogramVec{metrics.PublishDuration, metrics.UnpublishDuration} {
		for _, v := range labelValues(t, h)["hook"] {
			if !slices.Contains(hooks, v) {
				t.Errorf("hook label %q", v)
			}
		}
		for _, v := range labelValues(t, h)["code"] {
			if strings.Contains(v, "(") {
				t.Errorf("code label %q", v)
			}
		}
	}
	ns := labelValues(t, metrics.PolicyDenials)["namespace"]
	for _, v := range ns {
		if !slices.Contains([]string{"web", policy.OtherLabel, policy.LocalLabel}, v) {
			t.Errorf("namespace label %q", v)
		}
	}
	if !slices.Contains(ns, "web") || !slices.Contains(ns, policy.OtherLabel) {
		t.Errorf("namespace labels %v, want web and other", ns)
	}
	for h, want := range map[loader.Hook]string{"xdp": "xdp", "tcx": "tcx", "": "unknown", "kprobe": "kprobe", "raw_tracepoint": "invalid", "xdp\n": "invalid"} {
		if got := hookLabel(h); got != want {
			t.Errorf("hookLabel(%q) = %q, want %q", h, got, want)
		}
	}
}

// captureLogs sends klog's output to a buffer for the test's duration.
func captureLogs(t *testing.T) *bytes.Buffer {
	t.Helper()
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.Set("logtostderr", "false")
	fs.Set("alsologtostderr", "false")
	fs.Set("stderrthreshold", "FATAL")
	var buf bytes.Buffer
	klog.SetOutput(&buf)
	t.Cleanup(func() {
		klog.Flush()
		fs.Set("logtostderr", "true")
		klog.SetOutput(nil)
	})
	return &buf
}

// A request can be large and hostile: what it adds to the log is bounded,
// and nothing of a refused request is logged but the bounded error.
func TestLogsBounded(t *testing.T) {
	buf := captureLogs(t)
	f := newTestDriver(t, nil)
	ctx := context.Background()
	huge := strings.Repeat("A", 1<<20)

	a := localAttrs()
	a[AttrImage] = huge
	f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, a))
	a = localAttrs()
	a[kubeletPrefix+"x"] = huge
	f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, a))
	klog.Flush()
	if buf.Len() > 8<<10 {
		t.Fatalf("two refused requests with 1 MiB attributes logged %d bytes", buf.Len())
	}

	// An accepted request with values at their bounds.
	buf.Reset()
	a = podAttrs(strings.Repeat("n", 3000))
	a[keyPodName] = strings.Repeat("p", 3000)
	a[keyServiceAccount] = strings.Repeat("s", 3000)
	a[AttrImage] = "registry.example/" + strings.Repeat("i", 1000)
	f.d.NodePublishVolume(ctx, publishReq("vol-2", testTarget, a))
	klog.Flush()
	for _, line := range strings.Split(buf.String(), "\n") {
		if len(line) > 4<<10 {
			t.Fatalf("log line of %d bytes: %.200s…", len(line), line)
		}
	}
	if !strings.Contains(buf.String(), `"Audit" action="load"`) {
		t.Fatalf("the checked request was not logged: %s", buf.String())
	}

	// The interceptor clips what it logs of a failed call.
	buf.Reset()
	logCalls(ctx, &csi.NodePublishVolumeRequest{}, &grpcInfo, func(context.Context, any) (any, error) {
		return nil, status.Error(codes.InvalidArgument, huge)
	})
	klog.Flush()
	if buf.Len() > 4<<10 {
		t.Fatalf("a failed call logged %d bytes", buf.Len())
	}
}

var grpcInfo = grpc.UnaryServerInfo{FullMethod: "/csi.v1.Node/NodePublishVolume"}

func TestClip(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"abcdef", 3, "abc…(6 bytes)"},
		{"ééé", 3, "é…(6 bytes)"}, // never cuts a rune in two
	} {
		if got := clip(c.in, c.n); got != c.want {
			t.Errorf("clip(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}

type recordedEvent struct {
	warning        bool
	pod            events.Pod
	reason, detail string
}

type fakeEvents struct {
	mu  sync.Mutex
	got []recordedEvent
}

func (e *fakeEvents) Warning(p events.Pod, reason, msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, recordedEvent{true, p, reason, msg})
}

func (e *fakeEvents) Normal(p events.Pod, reason, msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, recordedEvent{false, p, reason, msg})
}

// The pod hears why its volume did or did not mount, in bounded words; a
// busy volume, which kubelet retries, makes no event.
func TestPodEvents(t *testing.T) {
	ctx := context.Background()
	rec := &fakeEvents{}
	f := &fakes{loader: newFakeLoader(), store: newFakeStore(), mounts: newFakeMounts()}
	pol := mustPolicy(t, "rules:\n- name: web\n  namespaces: [web]\n  images: [\"registry.example/bpf/*\"]\n")
	d, err := newDriver(Options{NodeID: "n", StateDir: "/state", BPFFSRoot: "/bpffs", Policy: policy.Static(pol), Events: rec}, f.loader, f.store, f.mounts)
	if err != nil {
		t.Fatal(err)
	}

	denied := podAttrs("web")
	denied[AttrImage] = "evil.example/" + strings.Repeat("x", 1000)
	d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, denied))
	f.loader.acquireErr = fault.Errorf(fault.Precondition, "%s", strings.Repeat("y", 10000))
	d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, podAttrs("web")))
	f.loader.acquireErr = nil
	unlock, _ := d.locks.tryLock("vol-1")
	d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, podAttrs("web")))
	unlock()
	if _, err := d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, podAttrs("web"))); err != nil {
		t.Fatal(err)
	}
	d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, podAttrs("web"))) // already published: nothing new

	want := []struct {
		warning bool
		reason  string
	}{{true, events.ReasonDenied}, {true, events.ReasonFailed}, {false, events.ReasonLoaded}}
	if len(rec.got) != len(want) {
		t.Fatalf("events %+v, want %d", rec.got, len(want))
	}
	for i, w := range want {
		e := rec.got[i]
		if e.warning != w.warning || e.reason != w.reason || e.pod != (events.Pod{Namespace: "web", Name: "pod-1", UID: "uid-1"}) {
			t.Errorf("event %d: %+v, want warning=%v reason %s", i, e, w.warning, w.reason)
		}
		if len(e.detail) > 2*maxLogError {
			t.Errorf("event %d: %d bytes", i, len(e.detail))
		}
	}
}

// A target that fails its check (outside the allowed roots, a symlink, not
// empty, a missing parent) is refused before the image is fetched: nothing
// is resolved, acquired, mounted or recorded.
func TestTargetCheckedBeforeFetch(t *testing.T) {
	f := newTestDriver(t, nil)
	f.mounts.openErr = fault.Errorf(fault.Precondition, "target %s is reached through a symlink", testTarget)
	_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, localAttrs()))
	wantCode(t, err, codes.FailedPrecondition, "symlink")
	if f.mounts.opened != 1 || f.loader.resolves != 0 {
		t.Errorf("targets opened %d, images resolved %d; want 1 and 0", f.mounts.opened, f.loader.resolves)
	}
	f.assertNothingLeft(t)
}
