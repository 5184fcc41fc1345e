package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// The lifetimes scenarios (docs/lifetimes.md): a DaemonSet whose volume
// keeps its program attached for 30s rolls out twice with maxUnavailable:
// 1 (the old pod goes before the new one comes) while numbered frames
// flow, first with the same request (the new pod takes the lingering
// program over), then with a new image version (it upgrades the lingering
// program in place): xdp_seq sees every frame, without a gap, in one
// map. Then a monitoring pod in another namespace reads a named program's
// maps through `from:`.
const (
	ltMonitorNS = "e2e-monitoring"
	ltSeqName   = "lt-seq"
	ltSeqV2     = bytecodeDir + "/xdp-seq-v2"
)

func TestLifetimes(t *testing.T) {
	c := setup(t)
	ctx := context.Background()
	for _, ns := range []string{allowedNS, ltMonitorNS} {
		if err := c.createNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	c.ltInstall(t, ctx)
	// A second version of xdp_seq: the same code under another file name,
	// so another image digest.
	obj, err := os.ReadFile(filepath.Join(repoRoot, "test/programs/xdpseq_bpfel.o"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := bytecode.Build(obj, "xdpseq-v2.o", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bytecode.WriteLayout(ltSeqV2, "v2", img); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(ltSeqV2) })

	t.Run("keepAttached-rollouts", func(t *testing.T) { c.ltRollouts(t, ctx) })
	if t.Failed() {
		return
	}
	t.Run("from-monitoring", func(t *testing.T) { c.ltMonitoring(t, ctx) })
	if t.Failed() {
		return
	}
	// Nothing left for the next test's install: no program pinned, no
	// driver state.
	c.waitDriverClean(ctx, t, "after the scenarios")
}

// ltRollouts: the DaemonSet scenario.
func (c *cluster) ltRollouts(t *testing.T, ctx context.Context) {
	veth := testenv.NewVeth(t)
	dsc := c.CS.AppsV1().DaemonSets(allowedNS)
	ds := ltDaemonSet(veth.Host, "oci:"+seqLayout+":v1")
	if _, err := dsc.Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dsc.Delete(context.Background(), ltSeqName, metav1.DeleteOptions{}) })
	first, err := c.ltWaitRollout(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	id := testenv.XDPProgram(t, veth.Host)
	if id == 0 {
		t.Fatalf("no XDP program on %s", veth.Host)
	}
	send := veth.StartSeq(t, 50, 64, 2*time.Millisecond)
	send.WaitSent(t, 200)

	// 1: the pod template changes, the request does not.
	rollout := func(what string, edit func(*appsv1.DaemonSet)) *corev1.Pod {
		t.Helper()
		before, err := dsc.Get(ctx, ltSeqName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		old := c.ltPod(t, ctx)
		edit(before)
		start := time.Now()
		if _, err := dsc.Update(ctx, before, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		p, err := c.ltWaitRollout(ctx, old.Name)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s: pod %s replaced by %s in %v", what, old.Name, p.Name, time.Since(start).Round(time.Millisecond))
		send.WaitSent(t, send.Sent()+200)
		return p
	}
	second := rollout("rollout of the same request", func(d *appsv1.DaemonSet) {
		d.Spec.Template.Annotations = map[string]string{"e2e/rollout": "2"}
	})
	if got := testenv.XDPProgram(t, veth.Host); got != id {
		t.Fatalf("after the rollout XDP program %d runs on %s, want %d taken over", got, veth.Host, id)
	}
	if f := nonEmpty(t, "/run/bpfmount/lingers"); len(f) != 0 {
		t.Fatalf("linger records %v after the new pod took the program over", f)
	}
	// 2: a new image version under the same name.
	third := rollout("rollout to image v2", func(d *appsv1.DaemonSet) {
		d.Spec.Template.Annotations = map[string]string{"e2e/rollout": "3"}
		d.Spec.Template.Spec.Volumes[0].CSI.VolumeAttributes["image"] = "oci:" + ltSeqV2 + ":v2"
	})
	if err := send.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the last frames through
	now := testenv.XDPProgram(t, veth.Host)
	if now == 0 || now == id {
		t.Fatalf("after the rollout to v2 XDP program %d runs on %s (before: %d), want the upgraded one", now, veth.Host, id)
	}
	vol, err := c.volumePath(ctx, allowedNS, third.Name)
	if err != nil {
		t.Fatal(err)
	}
	count, gaps := ltSeqCounts(t, filepath.Join(vol, "seq_map"))
	t.Logf("pods %s, %s, %s: %d frames sent, %d counted, %d gaps", first.Name, second.Name, third.Name, send.Sent(), count, gaps)
	if gaps != 0 || count != uint64(send.Sent()) {
		t.Fatalf("across two rollouts: %d frames sent, %d counted, %d gaps; want all counted in one map, no gap", send.Sent(), count, gaps)
	}

	// The DaemonSet goes: its program stays for keepAttached, then the
	// driver detaches it.
	if err := dsc.Delete(ctx, ltSeqName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.deletePod(ctx, allowedNS, third.Name); err != nil {
		t.Fatal(err)
	}
	gone := time.Now()
	if got := testenv.XDPProgram(t, veth.Host); got != now {
		t.Fatalf("XDP program %d on %s right after the last pod went, want %d kept attached", got, veth.Host, now)
	}
	var left uint32
	err = poll(ctx, 60*time.Second, func() (bool, error) {
		left = testenv.XDPProgram(t, veth.Host)
		return left == 0, nil
	})
	if err != nil {
		t.Fatalf("XDP program %d still on %s %v after the last pod went (keepAttached: 30s)", left, veth.Host, time.Since(gone).Round(time.Second))
	}
	if d := time.Since(gone); d < 25*time.Second {
		t.Fatalf("the program detached %v after the last pod went, before its keepAttached of 30s", d.Round(time.Millisecond))
	}
}

// ltMonitoring: a pod loads a counter under a name; a pod of another
// namespace reads its counts through a read-only map-only volume.
func (c *cluster) ltMonitoring(t *testing.T, ctx context.Context) {
	veth := testenv.NewVeth(t)
	ro := true
	loaderPod := podSpec(podOpts{name: "lt-edge", ns: allowedNS, iface: veth.Host, layout: counterLayout})
	loaderPod.Spec.Volumes[0].CSI.VolumeAttributes["name"] = "lt-edge"
	monitor := podSpec(podOpts{name: "lt-monitor", ns: ltMonitorNS, reader: true})
	monitor.Spec.Volumes[0].CSI = &corev1.CSIVolumeSource{
		Driver: "csi.bpfmount.io", ReadOnly: &ro,
		VolumeAttributes: map[string]string{"from": "lt-edge", "maps": "xdp_stats_map"},
	}
	for _, p := range []*corev1.Pod{loaderPod, monitor} {
		if _, err := c.CS.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.deletePod(context.Background(), p.Namespace, p.Name) })
		// The monitor's volume waits (Unavailable, retried) until the
		// name is loaded; created in this order it need not.
		if err := c.waitRunning(ctx, p.Namespace, p.Name, 60*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	n0, err := c.waitPackets(ctx, ltMonitorNS, "lt-monitor", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := veth.Send(200, 64); err != nil {
		t.Fatal(err)
	}
	n1, err := c.waitPackets(ctx, ltMonitorNS, "lt-monitor", n0+200)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the monitoring pod in %s reads %d -> %d packets of %s's program", ltMonitorNS, n0, n1, allowedNS)
	// Reading does not hold the program: the loading pod's deletion
	// detaches it.
	if err := c.deletePod(ctx, allowedNS, loaderPod.Name); err != nil {
		t.Fatal(err)
	}
	if err := waitDetached(t, veth.Host); err != nil {
		t.Fatalf("after the loading pod went: %v", err)
	}
	if err := c.deletePod(ctx, ltMonitorNS, monitor.Name); err != nil {
		t.Fatal(err)
	}
}

// ltInstall installs the chart with a policy for the scenarios, and
// uninstalls it when the test ends.
func (c *cluster) ltInstall(t *testing.T, ctx context.Context) {
	t.Helper()
	chartDir := filepath.Join(repoRoot, "charts", "bpfmount")
	vals := c.Values("v1", freePort())
	vals["policy"] = map[string]any{
		"rules": []any{
			map[string]any{
				"name":         "lifetimes",
				"namespaces":   []any{allowedNS},
				"images":       []any{"oci:" + bytecodeDir + "/**"},
				"names":        []any{ltSeqName, "lt-edge"},
				"readOnlyOnly": true,
			},
			map[string]any{
				"name":       "monitoring",
				"namespaces": []any{ltMonitorNS},
				"names":      []any{"lt-edge"},
			},
		},
		"keepAttached": map[string]any{"max": "1m"},
	}
	if err := c.HelmInstall(ctx, chartDir, vals); err != nil {
		t.Fatalf("helm install: %v%s", err, c.driverPodEvents(ctx))
	}
	t.Cleanup(func() { c.ltUninstall(t) })
	c.waitRegistered(ctx, t)
}

// ltUninstall removes the release and waits until the driver is gone from
// the node, so that the next test can install it again.
func (c *cluster) ltUninstall(t *testing.T) {
	ctx := context.Background()
	if err := c.HelmUninstall(); err != nil {
		t.Errorf("helm uninstall: %v", err)
		return
	}
	err := poll(ctx, 60*time.Second, func() (bool, error) {
		pods, err := c.CS.CoreV1().Pods(releaseNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		n, err := c.CS.StorageV1().CSINodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return len(pods.Items) == 0 && len(n.Spec.Drivers) == 0, nil
	})
	if err != nil {
		t.Errorf("the driver is still on the node after uninstall: %v", err)
	}
}

// ltDaemonSet runs the pause binary with an xdp_seq volume named ltSeqName
// kept attached 30s, rolled out one pod at a time (old pod first).
func ltDaemonSet(iface, image string) *appsv1.DaemonSet {
	p := podSpec(podOpts{name: ltSeqName, ns: allowedNS, iface: iface, layout: seqLayout})
	p.Spec.Volumes[0].CSI.VolumeAttributes = map[string]string{
		"image": image, "interface": iface, "name": ltSeqName, "keepAttached": "30s",
	}
	labels := map[string]string{"app": ltSeqName, "e2e": "bpfmount"}
	one := intstr.FromInt32(1)
	zero := intstr.FromInt32(0)
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: ltSeqName, Namespace: allowedNS},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: p.Spec},
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{
				Type:          appsv1.RollingUpdateDaemonSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxUnavailable: &one, MaxSurge: &zero},
			},
		},
	}
}

// ltPod returns the DaemonSet's live pod.
func (c *cluster) ltPod(t *testing.T, ctx context.Context) *corev1.Pod {
	t.Helper()
	pods, err := c.CS.CoreV1().Pods(allowedNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + ltSeqName})
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		if pods.Items[i].DeletionTimestamp == nil {
			return &pods.Items[i]
		}
	}
	t.Fatal("the DaemonSet has no pod")
	return nil
}

// ltWaitRollout waits until the DaemonSet runs one pod, ready, other than
// old (and old is gone).
func (c *cluster) ltWaitRollout(ctx context.Context, old string) (*corev1.Pod, error) {
	var cur *corev1.Pod
	err := poll(ctx, 120*time.Second, func() (bool, error) {
		pods, err := c.CS.CoreV1().Pods(allowedNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + ltSeqName})
		if err != nil {
			return false, err
		}
		if len(pods.Items) != 1 || pods.Items[0].Name == old || pods.Items[0].DeletionTimestamp != nil {
			return false, fmt.Errorf("%d pods of the DaemonSet", len(pods.Items))
		}
		cur = &pods.Items[0]
		if cur.Status.Phase != corev1.PodRunning {
			return false, fmt.Errorf("pod %s is %s%s", cur.Name, cur.Status.Phase, c.podEvents(ctx, allowedNS, cur.Name))
		}
		for _, cs := range cur.Status.ContainerStatuses {
			if !cs.Ready {
				return false, nil
			}
		}
		return true, nil
	})
	return cur, err
}

// ltSeqCounts reads xdp_seq's counters through a pinned seq_map: frames
// counted and gaps in their sequence.
func ltSeqCounts(t *testing.T, pin string) (count, gaps uint64) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("opening %s: %v", pin, err)
	}
	defer m.Close()
	var v [24]byte
	if err := m.Lookup(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(v[0:]), binary.LittleEndian.Uint64(v[8:])
}
