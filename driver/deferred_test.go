package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/driver/events"
	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/cri"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader"
)

const podUID = "3c1e7a52-9d0b-4f6e-8a21-5b4c3d2e1f00"

// fakeCRI answers PodSandbox from what the test sets.
type fakeCRI struct {
	mu    sync.Mutex
	sb    *cri.Sandbox
	err   error
	calls int
}

func (c *fakeCRI) PodSandbox(_ context.Context, uid string) (*cri.Sandbox, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if uid != podUID {
		return nil, fmt.Errorf("asked for pod %q", uid)
	}
	if c.err != nil {
		return nil, c.err
	}
	if c.sb == nil {
		return nil, fault.Wrap(fault.NotFound, fmt.Errorf("pod %s: %w", uid, cri.ErrNoSandbox))
	}
	s := *c.sb
	return &s, nil
}

func (c *fakeCRI) set(sb *cri.Sandbox, err error) {
	c.mu.Lock()
	c.sb, c.err = sb, err
	c.mu.Unlock()
}

func (c *fakeCRI) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

// netnsLoader is the fake loader with the deferred attach: it records
// where each key is attached.
type netnsLoader struct {
	*fakeLoader
	mu        sync.Mutex
	where     map[string]string // key -> netns
	attachErr error
	detaches  int
}

func (n *netnsLoader) AttachNetns(key, netns string) (*loader.Program, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.attachErr != nil {
		return nil, n.attachErr
	}
	n.where[key] = netns
	return &loader.Program{Key: key, Attached: true, Netns: netns}, nil
}

func (n *netnsLoader) DetachNetns(key string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.where, key)
	n.detaches++
	return nil
}

func (n *netnsLoader) at(key string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.where[key]
}

// Resolve is the fake's, with the pod a deferred identity names.
func (n *netnsLoader) Resolve(ctx context.Context, req loader.Request) (*loader.Resolved, error) {
	r, err := n.fakeLoader.Resolve(ctx, req)
	if err == nil {
		r.Identity.Pod = req.Pod
	}
	return r, err
}

// Adopt gives back a deferred program as a restarted loader finds it.
func (n *netnsLoader) Adopt(id loader.Identity, _ string) (*loader.Program, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return &loader.Program{Identity: id, Key: id.Key(), Attached: n.where[id.Key()] != "", Netns: n.where[id.Key()]}, nil
}

type podnetFakes struct {
	*fakes
	nl     *netnsLoader
	cri    *fakeCRI
	events *fakeEvents
}

const podnetPolicy = `rules:
- name: own
  namespaces: ["team"]
  images: ["registry.example/bpf/*"]
  interfaces: ["pod:*"]
`

func newPodnetDriver(t *testing.T, pol string, withCRI bool) *podnetFakes {
	t.Helper()
	f := newPodnetFakes()
	f.start(t, pol, f.nl, f.cri, withCRI)
	return f
}

// newPodnetFakes makes the fakes of a driver that finds pods' sandboxes,
// before it starts.
func newPodnetFakes() *podnetFakes {
	f := &podnetFakes{fakes: &fakes{loader: newFakeLoader(), store: newFakeStore(), mounts: newFakeMounts()},
		cri: &fakeCRI{}, events: &fakeEvents{}}
	f.nl = &netnsLoader{fakeLoader: f.loader, where: map[string]string{}}
	return f
}

// start starts f's driver under pol on loader ld, and with the runtime
// finder when withCRI.
func (f *podnetFakes) start(t *testing.T, pol string, ld programLoader, finder SandboxFinder, withCRI bool) {
	t.Helper()
	opts := Options{NodeID: "node-1", StateDir: "/state", BPFFSRoot: "/sys/fs/bpf/bpfmount", Policy: policy.Static(mustPolicy(t, pol)),
		Events: f.events, SandboxPoll: 5 * time.Millisecond, SandboxWait: time.Hour}
	if withCRI {
		opts.CRI = finder
	}
	d, err := newDriver(opts, ld, f.store, f.mounts)
	if err != nil {
		t.Fatal(err)
	}
	f.d = d
	t.Cleanup(d.StopWaiters)
}

// wantRefusedEarly publishes attrs and wants it refused as invalid input
// (want in the message), leaving nothing, before the runtime was asked
// (calls counts what it was asked) or an image resolved.
func (f *podnetFakes) wantRefusedEarly(t *testing.T, attrs map[string]string, want string, calls func() int) {
	t.Helper()
	_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, attrs))
	wantCode(t, err, codes.InvalidArgument, want)
	f.assertNothingLeft(t)
	if n := calls(); n != 0 || f.loader.resolves != 0 {
		t.Errorf("asked the runtime %d times, resolved %d images", n, f.loader.resolves)
	}
}

// wantUnpublishStopsWaiter unpublishes vol-1 and wants its waiter gone,
// the runtime no longer asked (calls counts what it was asked) and
// nothing left.
func (f *podnetFakes) wantUnpublishStopsWaiter(t *testing.T, calls func() int) {
	t.Helper()
	if _, err := f.d.NodeUnpublishVolume(context.Background(), unpublishReq("vol-1", testTarget)); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.d.deferredStatus("vol-1"); ok {
		t.Fatal("the waiter outlived unpublish")
	}
	n := calls()
	time.Sleep(30 * time.Millisecond)
	if calls() != n {
		t.Fatal("the runtime is still asked after unpublish")
	}
	f.assertNothingLeft(t)
}

// with sets keys of a copy of a; an empty value deletes the key.
func with(a map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			delete(out, kv[i])
			continue
		}
		out[kv[i]] = kv[i+1]
	}
	return out
}

func podnetAttrs(iface string) map[string]string {
	a := podAttrs("team")
	a[keyPodUID] = podUID
	a[AttrInterface] = iface
	a[AttrType] = "tcx"
	a[AttrDirection] = "ingress"
	return a
}

// eventually waits for cond, failing with what() after a bound.
func eventually(t *testing.T, what func() string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (f *podnetFakes) status(t *testing.T, vol string) podnetStatus {
	t.Helper()
	s, ok := f.d.deferredStatus(vol)
	if !ok {
		t.Fatalf("volume %s has no waiter", vol)
	}
	return s
}

func (f *podnetFakes) reasons() []string {
	f.events.mu.Lock()
	defer f.events.mu.Unlock()
	var out []string
	for _, e := range f.events.got {
		out = append(out, e.reason)
	}
	return out
}

// interface pod / pod:NAME: the pod's own interface, named as the kernel
// allows, from a pod with a UID, for xdp, tc (through the pod interface's
// dispatcher) and tcx; anything else is refused before anything is loaded.
func TestPodInterfaceAttribute(t *testing.T) {
	for _, tc := range []struct {
		iface, want string
	}{{"pod", "eth0"}, {"pod:net1", "net1"}, {"pod:eth0.100", "eth0.100"}} {
		vr, err := parseAttributes(podnetAttrs(tc.iface))
		if err != nil {
			t.Fatalf("%s: %v", tc.iface, err)
		}
		if vr.load.Interface != tc.want || vr.load.Pod != podUID {
			t.Errorf("%s: interface %q pod %q", tc.iface, vr.load.Interface, vr.load.Pod)
		}
		if got := policyInterface(&vr.load); got != "pod:"+tc.want {
			t.Errorf("%s: the policy sees %q", tc.iface, got)
		}
	}
	vr, err := parseAttributes(with(podnetAttrs("pod"), AttrType, "tc"))
	if err != nil {
		t.Fatalf("tc: %v", err)
	}
	if vr.load.Hook != loader.HookTC || vr.load.Pod != podUID || vr.load.Interface != "eth0" {
		t.Errorf("tc: parsed %+v", vr.load)
	}
	local := map[string]string{AttrImage: "registry.example/bpf/x:v1", AttrInterface: "pod", AttrType: "xdp"}
	for _, tc := range []struct {
		name  string
		attrs map[string]string
		want  string
	}{
		{"empty name", podnetAttrs("pod:"), "names no interface"},
		{"too long", podnetAttrs("pod:" + strings.Repeat("e", 16)), "not an interface name"},
		{"slash", podnetAttrs("pod:a/b"), "not an interface name"},
		{"colon", podnetAttrs("pod:a:b"), "not an interface name"},
		{"space", podnetAttrs("pod:a b"), "not an interface name"},
		{"local request", local, "local request comes from no pod"},
		{"uid", with(podnetAttrs("pod"), keyPodUID, "../../x"), "not a UUID"},
		{"cgroup type", with(podnetAttrs("pod"), AttrType, "sock_ops", AttrDirection, ""), "does not apply"},
		{"keepAttached", with(podnetAttrs("pod"), AttrKeepAttached, "30s"), "goes with the pod"},
		{"name", with(podnetAttrs("pod"), AttrName, "fw"), "goes with the pod"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newPodnetDriver(t, podnetPolicy, true)
			f.wantRefusedEarly(t, tc.attrs, tc.want, f.cri.count)
		})
	}
}

// A rule grants a pod's own interface with pod:* and nothing on the node;
// node patterns (eth*) never grant a pod's own interface.
func TestPodInterfacePolicy(t *testing.T) {
	ctx := context.Background()
	f := newPodnetDriver(t, podnetPolicy, true)
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, podnetAttrs("pod"))); err != nil {
		t.Fatal(err)
	}
	node := podnetAttrs("eth0")
	_, err := f.d.NodePublishVolume(ctx, publishReq("vol-2", testTarget+"2", node))
	wantCode(t, err, codes.PermissionDenied, `allows interfaces ["pod:*"] only`)

	g := newPodnetDriver(t, `rules:
- name: node
  namespaces: ["team"]
  images: ["registry.example/bpf/*"]
  interfaces: ["eth*"]
`, true)
	_, err = g.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, podnetAttrs("pod")))
	wantCode(t, err, codes.PermissionDenied, `on "pod:eth0"`)
	g.assertNothingLeft(t)
	if g.cri.count() != 0 {
		t.Error("a denied request reached the runtime")
	}
}

// A hostNetwork pod has no interface of its own; without a runtime
// endpoint, or with one that does not answer, the publish fails; all
// before anything is loaded.
func TestPodInterfacePreconditions(t *testing.T) {
	ctx := context.Background()
	f := newPodnetDriver(t, podnetPolicy, true)
	f.cri.set(&cri.Sandbox{ID: "sb-1", HostNetwork: true}, nil)
	_, err := f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, podnetAttrs("pod")))
	wantCode(t, err, codes.FailedPrecondition, "hostNetwork: true")
	if err != nil && !strings.Contains(err.Error(), NodeDefault) {
		t.Errorf("the message does not point to a node interface: %v", err)
	}
	f.assertNothingLeft(t)

	f.cri.set(nil, fault.Wrap(fault.Unavailable, errors.New("listing the sandboxes of pod x through the container runtime at unix:///nowhere: connection refused")))
	_, err = f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, podnetAttrs("pod")))
	wantCode(t, err, codes.Unavailable, "unix:///nowhere")
	f.assertNothingLeft(t)

	g := newPodnetDriver(t, podnetPolicy, false)
	_, err = g.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, podnetAttrs("pod")))
	wantCode(t, err, codes.FailedPrecondition, "--cri-endpoint")
	g.assertNothingLeft(t)
	if f.loader.resolves+g.loader.resolves != 0 {
		t.Error("an image was fetched")
	}
}

// The sandbox appears after the publish, is replaced, goes away, comes
// back; unpublish stops the waiter and leaves nothing.
func TestDeferredAttachFollowsSandbox(t *testing.T) {
	ctx := context.Background()
	f := newPodnetDriver(t, podnetPolicy, true)
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, podnetAttrs("pod"))); err != nil {
		t.Fatal(err)
	}
	rec := f.store.records["vol-1"]
	if rec == nil || rec.Identity.Pod != podUID || rec.Identity.Interface != "eth0" || rec.Identity.Netns != "" {
		t.Fatalf("record %+v", rec)
	}
	if s := f.status(t, "vol-1"); s.State != stateWaiting || f.nl.at(rec.Key) != "" {
		t.Fatalf("before the sandbox: %+v, attached in %q", s, f.nl.at(rec.Key))
	}
	before := deferredCount(t, stateAttached)

	f.cri.set(&cri.Sandbox{ID: "sb-1", Netns: "/var/run/netns/cni-1"}, nil)
	eventually(t, func() string { return fmt.Sprint(f.status(t, "vol-1")) }, func() bool {
		s := f.status(t, "vol-1")
		return s.State == stateAttached && s.Netns == "/var/run/netns/cni-1" && s.Sandbox == "sb-1"
	})
	if f.nl.at(rec.Key) != "/var/run/netns/cni-1" {
		t.Fatalf("loader attached in %q", f.nl.at(rec.Key))
	}

	// Replaced: the new sandbox's namespace, same key (same program, maps).
	f.cri.set(&cri.Sandbox{ID: "sb-2", Netns: "/var/run/netns/cni-2"}, nil)
	eventually(t, func() string { return f.nl.at(rec.Key) }, func() bool { return f.nl.at(rec.Key) == "/var/run/netns/cni-2" })
	eventually(t, func() string { return fmt.Sprint(f.status(t, "vol-1")) }, func() bool { return f.status(t, "vol-1").Sandbox == "sb-2" })

	// Gone: the link goes, the waiter waits for the next one.
	f.cri.set(nil, nil)
	eventually(t, func() string { return fmt.Sprint(f.status(t, "vol-1")) }, func() bool { return f.status(t, "vol-1").State == stateWaiting })
	if f.nl.at(rec.Key) != "" {
		t.Fatal("the link stayed with a gone sandbox")
	}
	f.cri.set(&cri.Sandbox{ID: "sb-3", Netns: "/var/run/netns/cni-3"}, nil)
	eventually(t, func() string { return f.nl.at(rec.Key) }, func() bool { return f.nl.at(rec.Key) == "/var/run/netns/cni-3" })
	if got := deferredCount(t, stateAttached) - before; got != 3 {
		t.Errorf("deferred_attach_total{result=attached} rose by %v, want 3", got)
	}
	n := 0
	for _, r := range f.reasons() {
		if r == events.ReasonAttached {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d ProgramAttached events, want 3 (one per sandbox): %v", n, f.reasons())
	}

	f.wantUnpublishStopsWaiter(t, f.cri.count)
}

// A sandbox that is there at publish is attached when the publish returns.
func TestDeferredAttachAtPublish(t *testing.T) {
	f := newPodnetDriver(t, podnetPolicy, true)
	f.cri.set(&cri.Sandbox{ID: "sb-1", Netns: "/proc/42/ns/net"}, nil)
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, podnetAttrs("pod:net1"))); err != nil {
		t.Fatal(err)
	}
	rec := f.store.records["vol-1"]
	if s := f.status(t, "vol-1"); s.State != stateAttached || s.Interface != "net1" || f.nl.at(rec.Key) != "/proc/42/ns/net" {
		t.Fatalf("at publish: %+v", s)
	}
}

// Failures are reported once each, in the status, an event and the
// metric, bounded; the waiter keeps trying and recovers.
func TestDeferredAttachFailures(t *testing.T) {
	f := newPodnetDriver(t, podnetPolicy, true)
	f.d.opts.SandboxWait = 20 * time.Millisecond
	before := deferredCount(t, stateFailed)
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, podnetAttrs("pod"))); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string { return fmt.Sprint(f.status(t, "vol-1")) }, func() bool { return f.status(t, "vol-1").State == stateFailed })
	if s := f.status(t, "vol-1"); !strings.Contains(s.Reason, "not attached after") {
		t.Errorf("reason %q", s.Reason)
	}
	time.Sleep(30 * time.Millisecond) // more polls: no more events
	f.nl.mu.Lock()
	f.nl.attachErr = fault.Errorf(fault.NotFound, "interface %q not found in the pod's network namespace %s", "eth0", strings.Repeat("x", 2000))
	f.nl.mu.Unlock()
	f.cri.set(&cri.Sandbox{ID: "sb-1", Netns: "/var/run/netns/cni-1"}, nil)
	eventually(t, func() string { return fmt.Sprint(f.status(t, "vol-1")) }, func() bool {
		return strings.Contains(f.status(t, "vol-1").Reason, "not found in the pod's network namespace")
	})
	if s := f.status(t, "vol-1"); len(s.Reason) > maxStatusReason+32 {
		t.Errorf("reason of %d bytes", len(s.Reason))
	}
	time.Sleep(30 * time.Millisecond)
	failures := 0
	for _, r := range f.reasons() {
		if r == events.ReasonAttachFailed {
			failures++
		}
	}
	if failures != 2 {
		t.Errorf("%d AttachFailed events, want 2 (one per reason): %v", failures, f.reasons())
	}
	if got := deferredCount(t, stateFailed) - before; got != 2 {
		t.Errorf("deferred_attach_total{result=failed} rose by %v, want 2", got)
	}
	// The interface appears: attached.
	f.nl.mu.Lock()
	f.nl.attachErr = nil
	f.nl.mu.Unlock()
	eventually(t, func() string { return fmt.Sprint(f.status(t, "vol-1")) }, func() bool { return f.status(t, "vol-1").State == stateAttached })

	// A hostNetwork pod's sandbox found later: failed, and no more asking.
	g := newPodnetDriver(t, podnetPolicy, true)
	if _, err := g.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, podnetAttrs("pod"))); err != nil {
		t.Fatal(err)
	}
	g.cri.set(&cri.Sandbox{ID: "sb-1", HostNetwork: true}, nil)
	eventually(t, func() string { return fmt.Sprint(g.status(t, "vol-1")) }, func() bool { return g.status(t, "vol-1").State == stateFailed })
	calls := g.cri.count()
	time.Sleep(30 * time.Millisecond)
	if g.cri.count() != calls {
		t.Error("the waiter still asks about a hostNetwork pod")
	}
}

// A restart starts the waiters of the recorded deferred volumes again.
func TestDeferredRestoredAtStart(t *testing.T) {
	f := newPodnetDriver(t, podnetPolicy, true)
	id := loader.Identity{Digest: "sha256:x", Program: "prog", Hook: loader.HookTCX, Interface: "eth0", Pod: podUID, Direction: "ingress", Priority: 1000}
	// Through the driver's store, as a record the last run wrote.
	if err := f.d.store.Put(&state.Record{VolumeID: "vol-1", TargetPath: testTarget, Identity: id, Key: id.Key(),
		Pod: state.Pod{Namespace: "team", Name: "p", UID: podUID}}); err != nil {
		t.Fatal(err)
	}
	f.cri.set(&cri.Sandbox{ID: "sb-1", Netns: "/var/run/netns/cni-1"}, nil)
	if _, err := f.d.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string { return f.nl.at(id.Key()) }, func() bool { return f.nl.at(id.Key()) == "/var/run/netns/cni-1" })
}

// The status map's value: valid JSON, NUL-padded to its size, bounded
// whatever the reason's length.
func TestStatusEncoding(t *testing.T) {
	s := podnetStatus{State: stateFailed, Interface: "eth0", Netns: strings.Repeat("/n", 500), Sandbox: strings.Repeat("s", 300),
		Reason: strings.Repeat("\u00e9", 5000), Since: time.Now()}
	b := s.encode()
	if len(b) != loader.StatusSize {
		t.Fatalf("%d bytes", len(b))
	}
	var got podnetStatus
	if err := json.Unmarshal([]byte(strings.TrimRight(string(b), "\x00")), &got); err != nil {
		t.Fatal(err)
	}
	if got.State != stateFailed || got.Interface != "eth0" || got.Reason == "" || got.Netns == "" {
		t.Fatalf("decoded %+v", got)
	}
}

// deferredCount reads bpfmount_deferred_attach_total{hook="tcx"}.
func deferredCount(t *testing.T, result string) float64 {
	t.Helper()
	var m dto.Metric
	if err := metrics.DeferredAttach.WithLabelValues("tcx", result).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// A pod's own interface is pod:NAME in list and "pod" in metric labels,
// whatever name the pod chose.
func TestPodInterfaceShown(t *testing.T) {
	id := loader.Identity{Hook: loader.HookXDP, Interface: "anything0", Pod: podUID}
	if got := shownInterface(id); got != "pod:anything0" {
		t.Errorf("list shows %q", got)
	}
	if got := metricInterface(id); got != "pod" {
		t.Errorf("metric label %q", got)
	}
	host := loader.Identity{Hook: loader.HookXDP, Interface: "eth0"}
	if shownInterface(host) != "eth0" || metricInterface(host) != "eth0" {
		t.Error("a node interface is shown otherwise")
	}
}

// The node policy's keepAttached default never keeps a program on a pod's
// own interface after its volume: the interface went with the pod.
func TestPodInterfaceNeverLingers(t *testing.T) {
	f := newPodnetDriver(t, podnetPolicy+"keepAttached:\n  default: 30s\n  max: 1m\n", true)
	f.cri.set(&cri.Sandbox{ID: "sb-1", Netns: "/proc/42/ns/net"}, nil)
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, podnetAttrs("pod"))); err != nil {
		t.Fatal(err)
	}
	if _, err := f.d.NodeUnpublishVolume(context.Background(), unpublishReq("vol-1", testTarget)); err != nil {
		t.Fatal(err)
	}
	if len(f.store.lingers) != 0 {
		t.Fatalf("linger records %v after the pod's volume went", f.store.lingers)
	}
	f.assertNothingLeft(t)
}
