package driver

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/driver/events"
	"github.com/bpfmount/bpfmount/internal/cri"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader"
)

// containerCRI is the fake runtime with containers.
type containerCRI struct {
	*fakeCRI
	cmu        sync.Mutex
	c          *cri.Container
	containers int
}

func (c *containerCRI) PodContainer(_ context.Context, uid, name string) (*cri.Container, error) {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	c.containers++
	if uid != podUID || name != "app" {
		return nil, fmt.Errorf("asked for container %q of pod %q", name, uid)
	}
	if c.c == nil {
		return nil, fault.Wrap(fault.NotFound, fmt.Errorf("container app: %w", cri.ErrNoContainer))
	}
	cc := *c.c
	return &cc, nil
}

func (c *containerCRI) setContainer(ct *cri.Container) {
	c.cmu.Lock()
	c.c = ct
	c.cmu.Unlock()
}

func (c *containerCRI) containerCalls() int {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	return c.containers
}

// containerLoader is the fake loader with the container attach.
type containerLoader struct {
	*netnsLoader
	pids []int
}

func (n *containerLoader) Resolve(ctx context.Context, req loader.Request) (*loader.Resolved, error) {
	r, err := n.netnsLoader.Resolve(ctx, req)
	if err == nil {
		r.Identity.Container = req.Container
	}
	return r, err
}

func (n *containerLoader) AttachContainer(key string, pid int) (*loader.Program, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.attachErr != nil {
		return nil, n.attachErr
	}
	where := fmt.Sprintf("pid:%d", pid)
	if n.where[key] != where {
		n.pids = append(n.pids, pid)
	}
	n.where[key] = where
	return &loader.Program{Key: key, Attached: true, Netns: where}, nil
}

type containerFakes struct {
	*podnetFakes
	cl   *containerLoader
	ccri *containerCRI
}

const containerPolicy = `rules:
- name: own-containers
  namespaces: ["team"]
  images: ["registry.example/bpf/*"]
  hooks: ["uprobe", "uretprobe"]
  attachTo: ["container:*:/usr/bin/*"]
`

func newContainerDriver(t *testing.T, pol string, withCRI bool) *containerFakes {
	t.Helper()
	pf := newPodnetFakes()
	f := &containerFakes{podnetFakes: pf, cl: &containerLoader{netnsLoader: pf.nl}, ccri: &containerCRI{fakeCRI: pf.cri}}
	pf.start(t, pol, f.cl, f.ccri, withCRI)
	return f
}

func containerAttrs(typ, attachTo string) map[string]string {
	a := podAttrs("team")
	delete(a, AttrInterface)
	a[keyPodUID] = podUID
	a[AttrType], a[AttrAttachTo], a[AttrContainer] = typ, attachTo, "app"
	return a
}

// container: NAME is a DNS label, for uprobes and uretprobes of pods only;
// anything else is refused before the runtime is asked or an image
// fetched, and leaves nothing.
func TestContainerAttribute(t *testing.T) {
	for _, typ := range []string{"uprobe", "uretprobe"} {
		vr, err := parseAttributes(containerAttrs(typ, "/usr/bin/app:main"))
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if vr.load.Container != "app" || vr.load.Pod != podUID || vr.load.Interface != "" {
			t.Errorf("%s: container %q pod %q interface %q", typ, vr.load.Container, vr.load.Pod, vr.load.Interface)
		}
		if got := policyAttachTo(&vr.load, vr.load.AttachTo); got != "container:app:/usr/bin/app:main" {
			t.Errorf("%s: the policy sees %q", typ, got)
		}
		if got := policyInterface(&vr.load); got != "" {
			t.Errorf("%s: the policy sees interface %q", typ, got)
		}
	}
	local := map[string]string{AttrImage: "registry.example/bpf/x:v1", AttrType: "uprobe", AttrAttachTo: "/usr/bin/app:main", AttrContainer: "app"}
	for _, tc := range []struct {
		name  string
		attrs map[string]string
		want  string
	}{
		{"tracepoint", containerAttrs("tracepoint", "sched/sched_process_exec"), "applies to types uprobe and uretprobe"},
		{"xdp", with(containerAttrs("xdp", ""), AttrInterface, "pod", AttrAttachTo, ""), "applies to types uprobe and uretprobe"},
		{"no type", with(containerAttrs("", "/usr/bin/app:main"), AttrType, ""), "applies to types uprobe and uretprobe"},
		{"upper case", with(containerAttrs("uprobe", "/usr/bin/app:main"), AttrContainer, "App"), "not a container name"},
		{"slash", with(containerAttrs("uprobe", "/usr/bin/app:main"), AttrContainer, "a/b"), "not a container name"},
		{"too long", with(containerAttrs("uprobe", "/usr/bin/app:main"), AttrContainer, strings.Repeat("a", 64)), "not a container name"},
		{"dash first", with(containerAttrs("uprobe", "/usr/bin/app:main"), AttrContainer, "-a"), "not a container name"},
		{"escaping path", containerAttrs("uprobe", "/usr/../../etc/x:main"), "absolute path without"},
		{"relative path", containerAttrs("uprobe", "usr/bin/app:main"), "absolute path without"},
		{"local request", local, "local request comes from no pod"},
		{"uid", with(containerAttrs("uprobe", "/usr/bin/app:main"), keyPodUID, "../../x"), "not a UUID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newContainerDriver(t, containerPolicy, true)
			f.wantRefusedEarly(t, tc.attrs, tc.want, f.ccri.containerCalls)
		})
	}
}

// A rule's host path patterns never grant a container's path, and a
// container pattern never grants a host path; without a runtime the
// publish fails before anything is loaded.
func TestContainerPolicy(t *testing.T) {
	ctx := context.Background()
	f := newContainerDriver(t, containerPolicy, true)
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, containerAttrs("uprobe", "/usr/bin/app:main"))); err != nil {
		t.Fatal(err)
	}
	host := with(containerAttrs("uprobe", "/usr/bin/app:main"), AttrContainer, "")
	_, err := f.d.NodePublishVolume(ctx, publishReq("vol-2", testTarget+"2", host))
	wantCode(t, err, codes.PermissionDenied, "container:*:/usr/bin/*")

	g := newContainerDriver(t, `rules:
- name: host-binaries
  namespaces: ["team"]
  images: ["registry.example/bpf/*"]
  hooks: ["uprobe"]
  attachTo: ["/usr/bin/*"]
`, true)
	_, err = g.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, containerAttrs("uprobe", "/usr/bin/app:main")))
	wantCode(t, err, codes.PermissionDenied, `"container:app:/usr/bin/app:main"`)
	g.assertNothingLeft(t)

	h := newContainerDriver(t, containerPolicy, false)
	_, err = h.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, containerAttrs("uprobe", "/usr/bin/app:main")))
	wantCode(t, err, codes.FailedPrecondition, "--cri-endpoint")
	h.assertNothingLeft(t)
	if g.loader.resolves+h.loader.resolves != 0 || g.ccri.containerCalls() != 0 {
		t.Error("a refused request fetched an image or asked the runtime")
	}
}

// The container starts after the publish, restarts with a new process,
// stops, fails to attach (its binary missing), runs again; each step shows
// in the status, events and the loader; unpublish stops the waiter and
// leaves nothing.
func TestContainerUprobeFollowsContainer(t *testing.T) {
	ctx := context.Background()
	f := newContainerDriver(t, containerPolicy, true)
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, containerAttrs("uprobe", "/usr/bin/app:main"))); err != nil {
		t.Fatal(err)
	}
	rec := f.store.records["vol-1"]
	if rec == nil || rec.Identity.Pod != podUID || rec.Identity.Container != "app" || rec.Identity.AttachTo != "/usr/bin/app:main" {
		t.Fatalf("record %+v", rec)
	}
	if s := f.status(t, "vol-1"); s.State != stateWaiting || s.Container != "app" || !strings.Contains(s.Reason, "container app") || f.cl.at(rec.Key) != "" {
		t.Fatalf("before the container runs: %+v, attached at %q", s, f.cl.at(rec.Key))
	}
	if f.ccri.count() != 0 {
		t.Error("a container's uprobe asked for the sandbox's network")
	}
	status := func() string { return fmt.Sprint(f.status(t, "vol-1")) }
	attachedTo := func(id string, pid int) func() bool {
		return func() bool {
			s := f.status(t, "vol-1")
			return s.State == stateAttached && s.ContainerID == id && s.PID == pid && f.cl.at(rec.Key) == fmt.Sprintf("pid:%d", pid)
		}
	}
	f.ccri.setContainer(&cri.Container{ID: "c-1", PID: 100})
	eventually(t, status, attachedTo("c-1", 100))

	// Restarted: a new process, the same program.
	f.ccri.setContainer(&cri.Container{ID: "c-2", PID: 200})
	eventually(t, status, attachedTo("c-2", 200))

	// Stopped: detached, and the status says so.
	f.ccri.setContainer(nil)
	eventually(t, status, func() bool {
		s := f.status(t, "vol-1")
		return s.State == stateWaiting && strings.Contains(s.Reason, "detached") && f.cl.at(rec.Key) == ""
	})

	// Its new image lacks the binary: failed, with the loader's reason.
	f.cl.mu.Lock()
	f.cl.attachErr = fault.Errorf(fault.NotFound, "binary %q not found in the container", "/usr/bin/app")
	f.cl.mu.Unlock()
	f.ccri.setContainer(&cri.Container{ID: "c-3", PID: 300})
	eventually(t, status, func() bool {
		s := f.status(t, "vol-1")
		return s.State == stateFailed && s.ContainerID == "c-3" && strings.Contains(s.Reason, "not found in the container")
	})
	f.cl.mu.Lock()
	f.cl.attachErr = nil
	f.cl.mu.Unlock()
	eventually(t, status, attachedTo("c-3", 300))

	var attached, failed int
	for _, r := range f.reasons() {
		switch r {
		case events.ReasonAttached:
			attached++
		case events.ReasonAttachFailed:
			failed++
		}
	}
	if attached != 3 || failed != 1 {
		t.Errorf("%d attached, %d failed events; want 3 and 1: %v", attached, failed, f.reasons())
	}
	if fmt.Sprint(f.cl.pids) != "[100 200 300]" {
		t.Errorf("attached for processes %v", f.cl.pids)
	}

	f.wantUnpublishStopsWaiter(t, f.ccri.containerCalls)
}

// A container's uprobe and the same uprobe in another container, or on
// the host, are different identities.
func TestContainerIsIdentity(t *testing.T) {
	base := loader.Identity{Digest: "sha256:x", Program: "p", Hook: loader.HookUprobe, AttachTo: "/usr/bin/app:main"}
	inApp, inOther, otherPod := base, base, base
	inApp.Pod, inApp.Container = podUID, "app"
	inOther.Pod, inOther.Container = podUID, "other"
	otherPod.Pod, otherPod.Container = "00000000-0000-0000-0000-000000000000", "app"
	keys := map[string]bool{}
	for _, id := range []loader.Identity{base, inApp, inOther, otherPod} {
		keys[id.Key()] = true
	}
	if len(keys) != 4 {
		t.Fatalf("%d distinct keys for 4 identities", len(keys))
	}
}
