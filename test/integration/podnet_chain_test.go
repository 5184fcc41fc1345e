package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/bpfmount/bpfmount/deploy/examples/xdp-counter/counter"
	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/cri"
	"github.com/bpfmount/bpfmount/internal/cri/critest"
	"github.com/bpfmount/bpfmount/internal/testenv"
)

// Several XDP volumes of one pod on pod:eth0 chain through the pod
// interface's dispatcher, in priority order, as on a host interface; the
// chain follows the pod to a replacement sandbox's namespace with every
// member (at once, or after the old sandbox is gone), and a restart adopts
// it; another pod's eth0 (same name, another namespace) has a chain of
// its own; unpublishing everything leaves nothing. Where the kernel cannot
// chain (no freplace), a pod's interface runs one program alone, as a host
// interface does (TestPodInterfaceDeferredAttach).
func TestPodInterfaceXDPChain(t *testing.T) {
	testenv.RequireRoot(t)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	rt, ep := critest.Start(t)
	layoutDir := strings.TrimSuffix(strings.TrimPrefix(img, "oci:"), ":v1")
	pol, err := policy.Parse([]byte(`apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: own-interface
  namespaces: ["team-a"]
  images: ["oci:` + filepath.Dir(layoutDir) + `/*"]
  interfaces: ["pod:*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	c, err := cri.Dial(ep)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	opts := testenv.DaemonOptions{Configure: func(o *driver.Options) {
		o.Policy = policy.Static(pol)
		o.CRI, o.SandboxPoll = c, 20*time.Millisecond
	}}
	d := testenv.StartDaemon(t, opts)
	if !d.Loader.CanChain() {
		t.Skip("this kernel cannot chain programs with a dispatcher (freplace, BPF_PROG_TYPE_EXT)")
	}
	ctx := context.Background()
	dir := testenv.ShortTempDir(t)
	target := func(vol string) string { return filepath.Join(dir, vol) }
	publish := func(vol, uid string, prio int, kv ...string) {
		t.Helper()
		attrs := podAttrs(img, "pod:eth0", "team-a")
		attrs["csi.storage.k8s.io/pod.uid"] = uid
		attrs["type"], attrs["priority"] = "xdp", strconv.Itoa(prio)
		for i := 0; i+1 < len(kv); i += 2 {
			attrs[kv[i]] = kv[i+1]
		}
		if _, err := d.Node.NodePublishVolume(ctx, publishReq(vol, target(vol), attrs, false)); err != nil {
			t.Fatalf("publish %s: %v", vol, err)
		}
	}
	attachedIn := func(sandbox string, vols ...string) {
		t.Helper()
		for _, vol := range vols {
			waitStatus(t, target(vol), func(s map[string]string) bool { return s["state"] == "attached" && s["sandbox"] == sandbox })
		}
	}
	// Read in this process: a consumer process per read fills a VM's /tmp.
	count := func(vol string) uint64 {
		t.Helper()
		c, err := counter.Read(filepath.Join(target(vol), "xdp_stats_map"))
		if err != nil {
			t.Fatal(err)
		}
		return c.Packets
	}
	// Frames each volume counted while n frames went to v's pod end. The
	// veths' own frames (a host end's neighbour discovery) may add a few
	// to any pod's counts: "none of these" is fewer than quiet.
	const quiet = 10
	delta := func(v *testenv.Veth, n int, vols ...string) []uint64 {
		t.Helper()
		before := make([]uint64, len(vols))
		for i, vol := range vols {
			before[i] = count(vol)
		}
		v.SendToPeer(t, n)
		out := make([]uint64, len(vols))
		for i, vol := range vols {
			out[i] = count(vol) - before[i]
		}
		return out
	}

	// Pod A: two volumes published before its sandbox exists, in the
	// opposite of their run order.
	podA := uuid.NewString()
	publish("a-late", podA, 50)
	publish("a-early", podA, 10)
	first := testenv.NewPodVeth(t, "eth0")
	rt.RunSandbox(podA, "sa-1", first.NetnsPath())
	attachedIn("sa-1", "a-late", "a-early")
	if got := delta(first, 30, "a-early", "a-late"); got[0] < 30 || got[1] < 30 {
		t.Fatalf("early/late counted %v of 30 frames; both must count every frame", got)
	}
	// A third between them whose XDP_PASS ends the chain: the later one
	// sees nothing, which proves the priority order.
	publish("a-stop", podA, 20, "proceedOn", "dispatcher_return")
	attachedIn("sa-1", "a-stop")
	if got := delta(first, 30, "a-early", "a-stop", "a-late"); got[0] < 30 || got[1] < 30 || got[2] != 0 {
		t.Fatalf("early/stop/late counted %v of 30 frames; want 30, 30, 0", got)
	}

	// Pod B: an eth0 too, in its own namespace, with its own chain.
	podB := uuid.NewString()
	other := testenv.NewPodVeth(t, "eth0")
	rt.RunSandbox(podB, "sb-1", other.NetnsPath())
	publish("b-only", podB, 50)
	attachedIn("sb-1", "b-only")
	if got := delta(other, 30, "b-only", "a-early", "a-stop", "a-late"); got[0] < 30 || got[1] >= quiet || got[2] >= quiet || got[3] != 0 {
		t.Fatalf("frames to pod B counted %v (b, a-early, a-stop, a-late); want 30 in B's volume only", got)
	}
	if got := delta(first, 30, "a-early", "a-stop", "a-late", "b-only"); got[0] < 30 || got[1] < 30 || got[2] != 0 || got[3] >= quiet {
		t.Fatalf("frames to pod A counted %v (a-early, a-stop, a-late, b); want 30, 30, 0, 0", got)
	}

	// Pod A's sandbox is replaced: the whole chain moves to the new
	// namespace, in the same order, and nothing runs in the old one.
	second := testenv.NewPodVeth(t, "eth0")
	rt.StopSandbox("sa-1")
	rt.RunSandbox(podA, "sa-2", second.NetnsPath())
	attachedIn("sa-2", "a-early", "a-stop", "a-late")
	if got := delta(second, 30, "a-early", "a-stop", "a-late", "b-only"); got[0] < 30 || got[1] < 30 || got[2] != 0 || got[3] >= quiet {
		t.Fatalf("in the new sandbox early/stop/late/b counted %v of 30 frames; want 30, 30, 0, 0", got)
	}
	if got := delta(first, 30, "a-early"); got[0] >= quiet {
		t.Fatalf("the old sandbox's namespace still runs pod A's chain: %d frames counted", got[0])
	}
	if got := delta(other, 30, "b-only"); got[0] < 30 {
		t.Fatalf("pod B's chain stopped counting after pod A moved: %d of 30", got[0])
	}

	// A restart adopts both chains where they are.
	d.Restart(opts)
	if got := delta(second, 30, "a-early", "a-stop", "a-late"); got[0] < 30 || got[1] < 30 || got[2] != 0 {
		t.Fatalf("after a restart early/stop/late counted %v of 30 frames; want 30, 30, 0", got)
	}
	if got := delta(other, 30, "b-only"); got[0] < 30 {
		t.Fatalf("after a restart pod B's chain counted %d of 30", got[0])
	}

	// The sandbox goes, and only later does its replacement come: the
	// members leave the chain, then join it again in the new namespace.
	rt.StopSandbox("sa-2")
	for _, vol := range []string{"a-early", "a-stop", "a-late"} {
		waitStatus(t, target(vol), func(s map[string]string) bool { return s["state"] == "waiting" })
	}
	if id := second.PeerXDPProgram(t); id != 0 {
		t.Errorf("XDP program %d still on the gone sandbox's eth0", id)
	}
	third := testenv.NewPodVeth(t, "eth0")
	rt.RunSandbox(podA, "sa-3", third.NetnsPath())
	attachedIn("sa-3", "a-early", "a-stop", "a-late")
	if got := delta(third, 30, "a-early", "a-stop", "a-late"); got[0] < 30 || got[1] < 30 || got[2] != 0 {
		t.Fatalf("in the third sandbox early/stop/late counted %v of 30 frames; want 30, 30, 0", got)
	}

	vols := []string{"a-early", "a-stop", "a-late", "b-only"}
	for _, vol := range vols {
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(vol, target(vol))); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range []*testenv.Veth{third, other} {
		if id := v.PeerXDPProgram(t); id != 0 {
			t.Errorf("XDP program %d is still attached to the pod's eth0 after unpublish", id)
		}
	}
	d.AssertClean(t, nil, target("a-early"), target("a-stop"), target("a-late"), target("b-only"))
}

// tc on a pod's interface runs through the pod interface's tc dispatcher:
// two volumes on pod:eth0 egress run in priority order (the later one sees
// the earlier one's mark), in the first sandbox and, after the chain
// followed the pod, in its replacement; unpublish leaves nothing.
func TestPodInterfaceTCChain(t *testing.T) {
	e := newPodnetEnv(t)
	if !e.d.Loader.CanChain() {
		t.Skip("this kernel cannot chain programs with a dispatcher (freplace, BPF_PROG_TYPE_EXT): tc is refused on a pod's interface as on a host's (TestPodInterfaceBadInput)")
	}
	ctx := context.Background()
	uid := uuid.NewString()
	first := testenv.NewPodVeth(t, "eth0")
	e.rt.RunSandbox(uid, "sb-1", first.NetnsPath())
	targets := map[int]string{}
	for _, prio := range []int{20, 10} { // published in the opposite of run order
		a := podnetAttrs(e.img, uid, "pod")
		a["type"], a["priority"] = "tc", strconv.Itoa(prio)
		a["proceedOn"] = "unspec,pipe,dispatcher_return" // tcx_order returns TC_ACT_UNSPEC
		a["globals"] = fmt.Sprintf("order_id=%02x000000", prio)
		targets[prio] = filepath.Join(e.dir, fmt.Sprint("tc", prio))
		if _, err := e.d.Node.NodePublishVolume(ctx, publishReq(fmt.Sprint("tc-", prio), targets[prio], a, true)); err != nil {
			t.Fatal(err)
		}
		waitStatus(t, targets[prio], func(s map[string]string) bool { return s["state"] == "attached" && s["sandbox"] == "sb-1" })
	}
	check := func(v *testenv.Veth, when string) {
		t.Helper()
		before := hits(t, targets[10])
		if err := v.Send(5, 60); err != nil {
			t.Fatal(err)
		}
		if n := hits(t, targets[10]) - before; n < 5 {
			t.Errorf("%s: the priority 10 program counted %d of 5 frames", when, n)
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
		waitStatus(t, target, func(s map[string]string) bool { return s["state"] == "attached" && s["sandbox"] == "sb-2" })
	}
	check(second, "replacement sandbox")
	for prio, target := range targets {
		if _, err := e.d.Node.NodeUnpublishVolume(ctx, unpublishReq(fmt.Sprint("tc-", prio), target)); err != nil {
			t.Fatal(err)
		}
	}
	e.d.AssertClean(t, nil, targets[10], targets[20])
}

// A pod interface's chain whose volume's record went while the daemon was
// down (a crash between the chain's change and the record's removal,
// simulated by deleting the record) is pruned at the next start: its
// dispatcher leaves the pod's eth0 and its pins go. Another pod's chain,
// held by its record in a living namespace, is kept and counts on.
func TestPodChainPrunedAtStart(t *testing.T) {
	e := newSandboxEnv(t, testenv.XDPCounterObject, "own-interface", `  interfaces: ["pod:*"]
`)
	if !e.d.Loader.CanChain() {
		t.Skip("this kernel cannot chain programs with a dispatcher (freplace, BPF_PROG_TYPE_EXT)")
	}
	ctx := context.Background()
	target := func(vol string) string { return filepath.Join(e.dir, vol) }
	veths := map[string]*testenv.Veth{}
	for _, vol := range []string{"kept", "dropped"} {
		uid := uuid.NewString()
		veths[vol] = testenv.NewPodVeth(t, "eth0")
		e.rt.RunSandbox(uid, "sb-"+vol, veths[vol].NetnsPath())
		attrs := podAttrs(e.img, "pod", "team-a")
		attrs["csi.storage.k8s.io/pod.uid"], attrs["type"] = uid, "xdp"
		if _, err := e.d.Node.NodePublishVolume(ctx, publishReq(vol, target(vol), attrs, false)); err != nil {
			t.Fatal(err)
		}
		waitStatus(t, target(vol), func(s map[string]string) bool { return s["state"] == "attached" })
		if veths[vol].PeerXDPProgram(t) == 0 {
			t.Fatalf("%s: no dispatcher on the pod's eth0", vol)
		}
	}
	chains := func() []string {
		t.Helper()
		m, err := filepath.Glob(filepath.Join(e.d.BPFFSRoot, "dispatchers", "pod-*"))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	if n := len(chains()); n != 2 {
		t.Fatalf("%d pod chains pinned, want 2", n)
	}

	e.d.Stop()
	st, err := state.Open(e.d.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Delete("dropped"); err != nil {
		t.Fatal(err)
	}
	e.d.Restart(e.opts)

	if m := chains(); len(m) != 1 {
		t.Fatalf("pod chains pinned after the start: %v, want the kept pod's alone", m)
	}
	if id := veths["dropped"].PeerXDPProgram(t); id != 0 {
		t.Errorf("XDP program %d still on the eth0 of the pod whose record went", id)
	}
	c0, err := counter.Read(filepath.Join(target("kept"), "xdp_stats_map"))
	if err != nil {
		t.Fatal(err)
	}
	veths["kept"].SendToPeer(t, 30)
	c1, err := counter.Read(filepath.Join(target("kept"), "xdp_stats_map"))
	if err != nil {
		t.Fatal(err)
	}
	if c1.Packets-c0.Packets < 30 {
		t.Errorf("the kept pod's chain counted %d of 30 frames", c1.Packets-c0.Packets)
	}
	if _, err := e.d.Node.NodeUnpublishVolume(ctx, unpublishReq("kept", target("kept"))); err != nil {
		t.Fatal(err)
	}
	// The dropped volume is unknown to the daemon now: the start's
	// collection unmounted its orphaned target, kubelet's unpublish
	// answers OK, and kubelet removes the directory.
	if m := testenv.MountsUnder(t, target("dropped")); len(m) != 0 {
		t.Errorf("the dropped volume's target is still mounted: %v", m)
	}
	if _, err := e.d.Node.NodeUnpublishVolume(ctx, unpublishReq("dropped", target("dropped"))); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(target("dropped")); err != nil {
		t.Fatal(err)
	}
	e.d.AssertClean(t, nil, target("kept"), target("dropped"))
}
