package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

// TestE2E runs the scenarios in order on one cluster; each depends on the
// previous ones (the chart installed, the veth, the pods).
func TestE2E(t *testing.T) {
	c := setup(t)
	ctx := context.Background()
	chartDir := filepath.Join(repoRoot, "charts", "bpfmount")
	healthPort := freePort()
	veth := testenv.NewVeth(t)
	for _, ns := range []string{allowedNS, deniedNS} {
		if err := c.createNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	step := func(name string, f func(t *testing.T)) {
		if t.Failed() {
			return
		}
		start := time.Now()
		if !t.Run(name, f) {
			t.FailNow()
		}
		addTiming("scenario "+name, time.Since(start))
	}

	step("1-install", func(t *testing.T) {
		if err := c.HelmInstall(ctx, chartDir, c.chartValues("v1", healthPort)); err != nil {
			t.Fatalf("helm install: %v%s", err, c.driverPodEvents(ctx))
		}
		c.waitRegistered(ctx, t)
	})

	step("2-xdp-counter", func(t *testing.T) {
		start := time.Now()
		if _, err := c.CS.CoreV1().Pods(allowedNS).Create(ctx, podSpec(podOpts{name: "counter-a", ns: allowedNS, iface: veth.Host, layout: counterLayout, reader: true}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := c.waitRunning(ctx, allowedNS, "counter-a", 60*time.Second); err != nil {
			t.Fatal(err)
		}
		addTiming("first bpfmount pod Ready", time.Since(start))
		if testenv.XDPProgram(t, veth.Host) == 0 {
			t.Fatalf("no XDP program on %s", veth.Host)
		}
		n0, err := c.waitPackets(ctx, allowedNS, "counter-a", 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := veth.Send(200, 64); err != nil {
			t.Fatal(err)
		}
		n1, err := c.waitPackets(ctx, allowedNS, "counter-a", n0+200)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("reader counts %d -> %d packets after 200 frames", n0, n1)
	})

	step("3-denied-namespace", func(t *testing.T) {
		if _, err := c.CS.CoreV1().Pods(deniedNS).Create(ctx, podSpec(podOpts{name: "denied", ns: deniedNS, iface: veth.Host, layout: counterLayout, reader: true}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("namespace %q may not load", deniedNS)
		var evs string
		err := poll(ctx, 60*time.Second, func() (bool, error) {
			evs = c.podEvents(ctx, deniedNS, "denied")
			return strings.Contains(evs, want), nil
		})
		if err != nil {
			t.Fatalf("no event carrying %q on the denied pod; events:%s", want, evs)
		}
		p, err := c.CS.CoreV1().Pods(deniedNS).Get(ctx, "denied", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Phase != "Pending" {
			t.Fatalf("denied pod is %s, want Pending (ContainerCreating)", p.Status.Phase)
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Waiting == nil || cs.State.Waiting.Reason != "ContainerCreating" {
				t.Fatalf("denied pod's container state %+v, want waiting in ContainerCreating", cs.State)
			}
		}
		t.Logf("events:%s", evs)
		if err := c.deletePod(ctx, deniedNS, "denied"); err != nil {
			t.Fatal(err)
		}
	})

	step("4-shared-program", func(t *testing.T) {
		id := testenv.XDPProgram(t, veth.Host)
		if _, err := c.CS.CoreV1().Pods(allowedNS).Create(ctx, podSpec(podOpts{name: "counter-b", ns: allowedNS, iface: veth.Host, layout: counterLayout, reader: true}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := c.waitRunning(ctx, allowedNS, "counter-b", 60*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := testenv.XDPProgram(t, veth.Host); got != id {
			t.Fatalf("XDP program on %s is %d after the second pod, want the shared %d", veth.Host, got, id)
		}
		if n := c.pinnedPrograms(t); n != 1 {
			t.Fatalf("%d programs pinned by the driver, want 1", n)
		}
		if err := c.deletePod(ctx, allowedNS, "counter-a"); err != nil {
			t.Fatal(err)
		}
		if got := testenv.XDPProgram(t, veth.Host); got != id {
			t.Fatalf("XDP program on %s is %d after deleting one pod, want %d still attached", veth.Host, got, id)
		}
		n0, err := c.waitPackets(ctx, allowedNS, "counter-b", 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := veth.Send(100, 64); err != nil {
			t.Fatal(err)
		}
		if _, err := c.waitPackets(ctx, allowedNS, "counter-b", n0+100); err != nil {
			t.Fatal(err)
		}
		if err := c.deletePod(ctx, allowedNS, "counter-b"); err != nil {
			t.Fatal(err)
		}
		if err := waitDetached(t, veth.Host); err != nil {
			t.Fatalf("after the last pod went: %v", err)
		}
	})

	step("5-upgrade-no-gap", func(t *testing.T) {
		if _, err := c.CS.CoreV1().Pods(allowedNS).Create(ctx, podSpec(podOpts{name: "seq", ns: allowedNS, iface: veth.Host, layout: seqLayout}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := c.waitRunning(ctx, allowedNS, "seq", 60*time.Second); err != nil {
			t.Fatal(err)
		}
		vol, err := c.volumePath(ctx, allowedNS, "seq")
		if err != nil {
			t.Fatal(err)
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(vol, "seq_map"), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatalf("opening seq_map through the pod's volume: %v", err)
		}
		defer m.Close()
		oldPod := c.driverPod(t)
		// Frames flow, numbered, for the whole upgrade.
		send := veth.StartSeq(t, 50, 64, 2*time.Millisecond)
		upStart := time.Now()
		err = c.HelmUpgrade(ctx, chartDir, c.chartValues("v2", healthPort))
		if err == nil {
			err = c.WaitDaemonSet(ctx)
		}
		upDur := time.Since(upStart)
		time.Sleep(500 * time.Millisecond)
		sendErr := send.Stop()
		if err != nil {
			t.Fatalf("helm upgrade: %v%s", err, c.driverPodEvents(ctx))
		}
		if sendErr != nil {
			t.Fatal(sendErr)
		}
		newPod := c.driverPod(t)
		if newPod.Name == oldPod.Name || !strings.HasSuffix(newPod.Spec.Containers[0].Image, ":v2") {
			t.Fatalf("driver pod after upgrade: %s %s (before: %s)", newPod.Name, newPod.Spec.Containers[0].Image, oldPod.Name)
		}
		var v [24]byte
		if err := m.Lookup(uint32(0), &v); err != nil {
			t.Fatal(err)
		}
		count, gaps := binary.LittleEndian.Uint64(v[0:]), binary.LittleEndian.Uint64(v[8:])
		t.Logf("upgrade took %v; %d frames sent, %d counted, %d gaps", upDur.Round(time.Millisecond), send.Sent(), count, gaps)
		if gaps != 0 || count != uint64(send.Sent()) {
			t.Fatalf("across the upgrade: %d frames sent, %d counted, %d gaps; want all counted, no gap", send.Sent(), count, gaps)
		}
	})

	step("6-delete-and-uninstall", func(t *testing.T) {
		if err := c.deletePod(ctx, allowedNS, "seq"); err != nil {
			t.Fatal(err)
		}
		if err := waitDetached(t, veth.Host); err != nil {
			t.Fatalf("after the pods went: %v", err)
		}
		// The detach is seen before the unpublish call has finished
		// removing pins and records: wait for the whole call.
		c.waitDriverClean(ctx, t, "after the pods went")
		if err := c.HelmUninstall(); err != nil {
			t.Fatalf("helm uninstall: %v", err)
		}
		err := poll(ctx, 60*time.Second, func() (bool, error) {
			pods, err := c.CS.CoreV1().Pods(releaseNS).List(ctx, metav1.ListOptions{})
			return err == nil && len(pods.Items) == 0, err
		})
		if err != nil {
			t.Fatalf("driver pods left after uninstall: %v", err)
		}
		err = poll(ctx, 30*time.Second, func() (bool, error) {
			n, err := c.CS.StorageV1().CSINodes().Get(ctx, nodeName, metav1.GetOptions{})
			return err == nil && len(n.Spec.Drivers) == 0, err
		})
		if err != nil {
			reg := filepath.Join(c.KubeletDir, "plugins_registry", "csi.bpfmount.io-reg.sock")
			if _, serr := os.Lstat(reg); serr == nil {
				t.Fatalf("driver still in CSINode after uninstall (%v): the driver exited without removing its registration socket %s, so kubelet never deregistered it", err, reg)
			}
			t.Fatalf("driver still in CSINode after uninstall: %v", err)
		}
		if ms := testenv.MountsUnder(t, filepath.Join(c.KubeletDir, "pods")); len(ms) > 0 {
			t.Fatalf("mounts left under kubelet's pods: %v", ms)
		}
	})
}

func (c *cluster) driverPod(t *testing.T) *corev1.Pod {
	t.Helper()
	pods, err := c.CS.CoreV1().Pods(releaseNS).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		if pods.Items[i].DeletionTimestamp == nil {
			return &pods.Items[i]
		}
	}
	t.Fatal("no driver pod")
	return nil
}

func (c *cluster) driverPodEvents(ctx context.Context) string {
	pods, err := c.CS.CoreV1().Pods(releaseNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		return ""
	}
	var b strings.Builder
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "\npod %s: %s%s", p.Name, p.Status.Phase, c.podEvents(ctx, releaseNS, p.Name))
	}
	return b.String()
}

// waitDriverClean waits until the driver has no program pinned and no
// state left; when says at what point, for the failure.
func (c *cluster) waitDriverClean(ctx context.Context, t *testing.T, when string) {
	t.Helper()
	var pinned int
	var recs []string
	err := poll(ctx, 30*time.Second, func() (bool, error) {
		pinned, recs = c.pinnedPrograms(t), nonEmpty(t, "/run/bpfmount")
		return pinned == 0 && len(recs) == 0, nil
	})
	if err != nil {
		t.Fatalf("%s: %d programs still pinned, driver state left: %v", when, pinned, recs)
	}
}

// pinnedPrograms counts the programs the driver pinned (under its bpffs
// root), by distinct program ID.
func (c *cluster) pinnedPrograms(t *testing.T) int {
	t.Helper()
	return len(pinnedProgramTypes())
}

// pinnedProgramTypes gives the type of each program the driver pinned
// (under its bpffs root), by program ID.
func pinnedProgramTypes() map[ebpf.ProgramID]ebpf.ProgramType {
	out := map[ebpf.ProgramID]ebpf.ProgramType{}
	filepath.WalkDir("/sys/fs/bpf/bpfmount", func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		prog, err := ebpf.LoadPinnedProgram(p, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return nil
		}
		defer prog.Close()
		if info, err := prog.Info(); err == nil {
			if id, ok := info.ID(); ok {
				out[id] = info.Type
			}
		}
		return nil
	})
	return out
}

// nonEmpty lists the regular files under dir.
func nonEmpty(t *testing.T, dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// waitDetached waits until no XDP program is on ifname: kubelet unpublishes
// a deleted pod's volumes shortly after the pod object is gone.
func waitDetached(t *testing.T, ifname string) error {
	var id uint32
	err := poll(context.Background(), 30*time.Second, func() (bool, error) {
		id = testenv.XDPProgram(t, ifname)
		return id == 0, nil
	})
	if err != nil {
		return fmt.Errorf("XDP program %d still on %s: %w", id, ifname, err)
	}
	return nil
}
