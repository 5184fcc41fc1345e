package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/internal/cri"
	"github.com/bpfmount/bpfmount/internal/cri/critest"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader"
)

// sandboxEnv is a daemon that finds pods' sandboxes through a fake runtime
// on a CRI socket, under a policy of one rule, name, granting namespace
// team-a the images beside obj's layout and what grants adds (the rule's
// further lines).
type sandboxEnv struct {
	d    *testenv.Daemon
	opts testenv.DaemonOptions
	rt   *critest.Runtime
	img  string
	dir  string
}

func newSandboxEnv(t *testing.T, obj, name, grants string) sandboxEnv {
	t.Helper()
	return newSandboxEnvPolling(t, obj, name, grants, 20*time.Millisecond, 0)
}

// newSandboxEnvPolling is newSandboxEnv whose waiters poll the runtime at
// poll without its events, at resync with them (0: the default).
func newSandboxEnvPolling(t *testing.T, obj, name, grants string, poll, resync time.Duration) sandboxEnv {
	t.Helper()
	testenv.RequireRoot(t)
	e := sandboxEnv{img: testenv.Layout(t, obj, "v1")}
	var ep string
	e.rt, ep = critest.Start(t)
	layoutDir := strings.TrimSuffix(strings.TrimPrefix(e.img, "oci:"), ":v1")
	pol, err := policy.Parse([]byte(`apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: ` + name + `
  namespaces: ["team-a"]
  images: ["oci:` + filepath.Dir(layoutDir) + `/*"]
` + grants))
	if err != nil {
		t.Fatal(err)
	}
	c, err := cri.Dial(ep)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	e.opts = testenv.DaemonOptions{Configure: func(o *driver.Options) {
		o.Policy = policy.Static(pol)
		o.CRI, o.SandboxPoll, o.SandboxResync = c, poll, resync
	}}
	e.d = testenv.StartDaemon(t, e.opts)
	e.dir = testenv.ShortTempDir(t)
	return e
}

// podnetEnv is a sandboxEnv whose sandboxes' namespaces are network
// namespaces the test makes (a veth's peer renamed eth0 in each), and
// whose policy grants its pods' own interfaces and nothing on the node.
type podnetEnv struct{ sandboxEnv }

func newPodnetEnv(t *testing.T) *podnetEnv {
	t.Helper()
	return &podnetEnv{newSandboxEnv(t, testenv.TCXOrderObject, "own-interface", `  interfaces: ["pod:*"]
`)}
}

func podnetAttrs(img, uid, iface string) map[string]string {
	a := podAttrs(img, iface, "team-a")
	a["csi.storage.k8s.io/pod.uid"] = uid
	a["type"], a["direction"] = "tcx", "egress"
	return a
}

// volumeStatus reads the status a volume shows its pod, values as text (a
// container's pid is a JSON number).
func volumeStatus(t *testing.T, target string) map[string]string {
	t.Helper()
	v := testenv.MapValue(t, filepath.Join(target, loader.StatusMap))
	var raw map[string]any
	if err := json.Unmarshal(bytes.TrimRight(v, "\x00"), &raw); err != nil {
		t.Fatalf("status %q: %v", v, err)
	}
	out := map[string]string{}
	for k, x := range raw {
		out[k] = fmt.Sprint(x)
	}
	return out
}

func waitStatus(t *testing.T, target string, ok func(map[string]string) bool) map[string]string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := volumeStatus(t, target)
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("status stayed %v", s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hits reads tcx_order's counter through the volume.
func hits(t *testing.T, target string) uint64 {
	t.Helper()
	return binary.NativeEndian.Uint64(testenv.MapValue(t, filepath.Join(target, "order_map"))[:8])
}

// A pod's own interface on the real kernel: the publish returns before the
// pod's sandbox exists, with the maps mounted and the status "waiting";
// the sandbox appears and the program counts what the pod's eth0 sends;
// kubelet replaces the sandbox and counting goes on in the new namespace
// only; a daemon restart keeps it; unpublish stops the waiter and leaves
// nothing.
func TestPodInterfaceDeferredAttach(t *testing.T) {
	e := newPodnetEnv(t)
	ctx := context.Background()
	uid := uuid.NewString()
	target := filepath.Join(e.dir, "vol")
	if _, err := e.d.Node.NodePublishVolume(ctx, publishReq("pn-1", target, podnetAttrs(e.img, uid, "pod"), true)); err != nil {
		t.Fatal(err)
	}
	rec, err := e.d.Record("pn-1")
	if err != nil || rec.Identity.Pod != uid || rec.Identity.Interface != "eth0" || rec.Identity.Netns != "" {
		t.Fatalf("record %+v %v", rec, err)
	}
	if s := volumeStatus(t, target); s["state"] != "waiting" || s["interface"] != "eth0" {
		t.Fatalf("before the sandbox: %v", s)
	}
	first := testenv.NewPodVeth(t, "eth0")
	if err := first.Send(10, 60); err != nil {
		t.Fatal(err)
	}
	if n := hits(t, target); n != 0 {
		t.Fatalf("counted %d frames before the sandbox was there", n)
	}

	e.rt.RunSandbox(uid, "sb-1", first.NetnsPath())
	s := waitStatus(t, target, func(s map[string]string) bool { return s["state"] == "attached" })
	if s["netns"] != first.NetnsPath() || s["sandbox"] != "sb-1" {
		t.Fatalf("attached: %v", s)
	}
	if err := first.Send(10, 60); err != nil {
		t.Fatal(err)
	}
	if n := hits(t, target); n < 10 {
		t.Fatalf("counted %d frames sent from the pod, want 10", n)
	}

	// The sandbox dies; kubelet starts a new one, with a new namespace.
	second := testenv.NewPodVeth(t, "eth0")
	e.rt.StopSandbox("sb-1")
	e.rt.RunSandbox(uid, "sb-2", second.NetnsPath())
	waitStatus(t, target, func(s map[string]string) bool { return s["sandbox"] == "sb-2" && s["state"] == "attached" })
	before := hits(t, target)
	if err := first.Send(10, 60); err != nil {
		t.Fatal(err)
	}
	if err := second.Send(10, 60); err != nil {
		t.Fatal(err)
	}
	if n := hits(t, target) - before; n < 10 || n >= 20 {
		t.Fatalf("after the replacement counted %d frames, want the new sandbox's 10 only", n)
	}

	// A restart adopts the attachment and follows the pod again.
	e.d.Restart(e.opts)
	third := testenv.NewPodVeth(t, "eth0")
	e.rt.StopSandbox("sb-2")
	e.rt.RunSandbox(uid, "sb-3", third.NetnsPath())
	waitStatus(t, target, func(s map[string]string) bool { return s["sandbox"] == "sb-3" && s["state"] == "attached" })
	before = hits(t, target)
	if err := third.Send(10, 60); err != nil {
		t.Fatal(err)
	}
	if n := hits(t, target) - before; n < 10 {
		t.Fatalf("after the restart counted %d frames, want 10", n)
	}

	if _, err := e.d.Node.NodeUnpublishVolume(ctx, unpublishReq("pn-1", target)); err != nil {
		t.Fatal(err)
	}
	calls := e.rt.Calls()
	time.Sleep(100 * time.Millisecond)
	if e.rt.Calls() != calls {
		t.Error("the runtime is still asked after unpublish")
	}
	e.d.AssertClean(t, nil, target)
}

// Bad input for a pod's own interface fails with the right code before
// anything is loaded, and leaves nothing behind.
func TestPodInterfaceBadInput(t *testing.T) {
	e := newPodnetEnv(t)
	uid := uuid.NewString()
	target := filepath.Join(e.dir, "vol")
	expectCode(t, e.d, publishReq("b1", target, podnetAttrs(e.img, uid, "pod:"+strings.Repeat("x", 16)), true), codes.InvalidArgument, "not an interface name")
	expectCode(t, e.d, publishReq("b2", target, podnetAttrs(e.img, uid, "pod:"), true), codes.InvalidArgument, "names no interface")
	expectCode(t, e.d, publishReq("b3", target, podnetAttrs(e.img, "pod-1", "pod"), true), codes.InvalidArgument, "not a UUID")
	if !e.d.Loader.CanChain() {
		// As on a host interface: tc needs the dispatcher (freplace).
		tc := podnetAttrs(e.img, uid, "pod")
		tc["type"] = "tc"
		expectCode(t, e.d, publishReq("b4", target, tc, true), codes.FailedPrecondition, "needs freplace")
	}
	// The node's interfaces are not the pod's to ask for.
	expectCode(t, e.d, publishReq("b5", target, podnetAttrs(e.img, uid, "lo"), true), codes.PermissionDenied, `allows interfaces ["pod:*"] only`)
	// A hostNetwork pod has no interface of its own.
	host := uuid.NewString()
	e.rt.RunHostNetworkSandbox(host, "sb-host")
	expectCode(t, e.d, publishReq("b6", target, podnetAttrs(e.img, host, "pod"), true), codes.FailedPrecondition, "hostNetwork: true")
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("target %s: %v", target, err)
	}
	e.d.AssertClean(t, nil, target)
}

// seenMark reads which program tcx_order found had run before it.
func seenMark(t *testing.T, target string) uint32 {
	t.Helper()
	return binary.NativeEndian.Uint32(testenv.MapValue(t, filepath.Join(target, "order_map"))[8:12])
}

// Two tcx programs on a pod's interface run in priority order, in the
// first sandbox and again in its replacement, where they move one by one.
func TestPodInterfaceOrderAcrossSandboxes(t *testing.T) {
	e := newPodnetEnv(t)
	ctx := context.Background()
	uid := uuid.NewString()
	first := testenv.NewPodVeth(t, "eth0")
	e.rt.RunSandbox(uid, "sb-1", first.NetnsPath())
	targets := map[int]string{}
	for _, prio := range []int{20, 10} { // the later one runs first
		a := podnetAttrs(e.img, uid, "pod")
		a["priority"] = strconv.Itoa(prio)
		a["globals"] = fmt.Sprintf("order_id=%02x000000", prio)
		targets[prio] = filepath.Join(e.dir, fmt.Sprint("vol", prio))
		if _, err := e.d.Node.NodePublishVolume(ctx, publishReq(fmt.Sprint("ord-", prio), targets[prio], a, true)); err != nil {
			t.Fatal(err)
		}
		// The sandbox is there: attached when the publish returns.
		if s := volumeStatus(t, targets[prio]); s["state"] != "attached" {
			t.Fatalf("priority %d at publish: %v", prio, s)
		}
	}
	check := func(v *testenv.Veth, when string) {
		t.Helper()
		if err := v.Send(5, 60); err != nil {
			t.Fatal(err)
		}
		if m := seenMark(t, targets[20]); m != 10 {
			t.Errorf("%s: the priority 20 program saw mark %d, want 10 (the priority 10 program runs first)", when, m)
		}
	}
	check(first, "first sandbox")

	second := testenv.NewPodVeth(t, "eth0")
	e.rt.StopSandbox("sb-1")
	e.rt.RunSandbox(uid, "sb-2", second.NetnsPath())
	for _, target := range targets {
		s := waitStatus(t, target, func(s map[string]string) bool { return s["sandbox"] == "sb-2" })
		if s["state"] != "attached" {
			t.Fatalf("after the replacement: %v", s)
		}
	}
	check(second, "replacement sandbox")
	for prio, target := range targets {
		if _, err := e.d.Node.NodeUnpublishVolume(ctx, unpublishReq(fmt.Sprint("ord-", prio), target)); err != nil {
			t.Fatal(err)
		}
	}
	e.d.AssertClean(t, nil, targets[10], targets[20])
}
