package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bpfmount/bpfmount/internal/cri"
	kcluster "github.com/bpfmount/bpfmount/test/e2e/cluster"
)

// A pod with a uprobe volume in its own container (container: app,
// attachTo /uprobe-target:main.tick, count_uprobe of the tracing hooks
// test programs): the probe fires for the container's main process and the
// child it starts, each signal to either adding exactly its 100 calls,
// and not for the same binary run in another pod or on the node. After the
// container restarts (its main process killed; kubelet starts it again,
// the volume stays) the probe attaches again and the counts go on in the
// same map. Deleting the pod detaches and unloads the program and leaves
// nothing behind.
func TestUprobeInContainer(t *testing.T) {
	c := setup(t)
	ctx := context.Background()
	const ns, probed, other = "e2e-uprobe", "uprobed", "uprobe-other"
	attachTo := kcluster.UprobeBinary + ":main.tick"
	if err := c.createNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	c.installScenarioChart(t, map[string]any{
		"name":         "own-container",
		"namespaces":   []any{ns},
		"images":       []any{"oci:" + bytecodeDir + "/**"},
		"hooks":        []any{"uprobe"},
		"attachTo":     []any{"container:*:" + attachTo},
		"readOnlyOnly": true,
	})
	c.deletePodsAtEnd(t, ns, probed, other)

	for _, p := range []*corev1.Pod{uprobePod(ns, probed, attachTo, true), uprobePod(ns, other, attachTo, false)} {
		if _, err := c.CS.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{probed, other} {
		if err := c.waitRunning(ctx, ns, n, 90*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	progs := driverPrograms(t, ebpf.Kprobe)
	if len(progs) == 0 {
		t.Fatal("no uprobe program pinned by the driver")
	}
	count := c.openCounts(t, ns, probed)
	rt, err := cri.Dial(c.Containerd)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()

	main, child := c.uprobeProcs(t, rt, ns, probed)
	// The attach follows the container's start by up to a poll: signal
	// the main process until its calls are counted.
	if err := waitCounted(main, count); err != nil {
		t.Fatalf("calls of the container's main process %d never counted: %v%s", main, err, c.podEvents(ctx, ns, probed))
	}
	for _, p := range []struct {
		what string
		pid  int
	}{{"main process", main}, {"child", child}} {
		if err := expectCalls(p.pid, count, 100); err != nil {
			t.Fatalf("the container's %s %d: %v", p.what, p.pid, err)
		}
	}

	// The same binary elsewhere: another pod's processes, and the node.
	om, oc := c.uprobeProcs(t, rt, ns, other)
	for _, pid := range []int{om, oc} {
		if err := expectCalls(pid, count, 0); err != nil {
			t.Fatalf("another pod's process %d running the same binary: %v", pid, err)
		}
	}
	n0 := count()
	if out, err := exec.Command(filepath.Join(c.Bin, "uprobe-target"), "once").CombinedOutput(); err != nil {
		t.Fatalf("running the target on the node: %v: %s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
	if n := count(); n != n0 {
		t.Fatalf("the same binary run on the node changed the count %d -> %d", n0, n)
	}
	t.Logf("counted the container's main process %d and child %d; not another pod's (%d, %d) or the node's", main, child, om, oc)

	// The container restarts: a new main process (and child), probed
	// again, counted in the same map.
	if err := syscall.Kill(main, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = poll(ctx, 90*time.Second, func() (bool, error) {
		c2, err := rt.PodContainer(ctx, c.podUID(t, ns, probed), "app")
		return err == nil && c2.PID != main, nil
	})
	if err != nil {
		t.Fatalf("container not restarted after its process was killed: %v%s", err, c.podEvents(ctx, ns, probed))
	}
	main2, child2 := c.uprobeProcs(t, rt, ns, probed)
	if err := waitCounted(main2, count); err != nil {
		t.Fatalf("calls of the restarted container's main process %d never counted: %v%s", main2, err, c.podEvents(ctx, ns, probed))
	}
	for _, pid := range []int{main2, child2} {
		if err := expectCalls(pid, count, 100); err != nil {
			t.Fatalf("the restarted container's process %d: %v", pid, err)
		}
	}
	t.Logf("after the restart: counted the new main process %d and child %d", main2, child2)

	if err := c.deletePod(ctx, ns, probed); err != nil {
		t.Fatal(err)
	}
	c.waitNothingLeft(t, progs)
}

// uprobePod runs the uprobe target (which starts a child) as container app,
// non-root with no capabilities; with probed, a bpfmount volume puts
// count_uprobe on attachTo in that container, else an emptyDir stands in.
func uprobePod(ns, name, attachTo string, probed bool) *corev1.Pod {
	p := podSpec(podOpts{name: name, ns: ns, emptyDir: !probed})
	if probed {
		p.Spec.Volumes[0].CSI.VolumeAttributes = map[string]string{
			"image": "oci:" + kcluster.TraceLayout + ":v1", "program": "count_uprobe", "type": "uprobe",
			"container": "app", "attachTo": attachTo,
		}
	}
	ctr := &p.Spec.Containers[0]
	ctr.Name = "app"
	ctr.Image = kcluster.UprobeImage
	return p
}

func (c *cluster) podUID(t *testing.T, ns, name string) string {
	t.Helper()
	p, err := c.CS.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return string(p.UID)
}

// uprobeProcs waits for the running container app of the pod and its
// child: the main process (from the runtime) and the other process of
// the container's cgroup.
func (c *cluster) uprobeProcs(t *testing.T, rt *cri.Client, ns, name string) (main, child int) {
	t.Helper()
	ctx := context.Background()
	uid := c.podUID(t, ns, name)
	err := poll(ctx, 60*time.Second, func() (bool, error) {
		ct, err := rt.PodContainer(ctx, uid, "app")
		if err != nil {
			return false, nil
		}
		b, err := os.ReadFile(filepath.Join(c.podCgroup(t, ns, name), ct.ID, "cgroup.procs"))
		if err != nil {
			return false, nil
		}
		main, child = ct.PID, 0
		for _, f := range strings.Fields(string(b)) {
			if pid, _ := strconv.Atoi(f); pid != main {
				child = pid
			}
		}
		return child != 0, nil
	})
	if err != nil {
		t.Fatalf("no main process and child in container app of %s/%s: %v", ns, name, err)
	}
	time.Sleep(200 * time.Millisecond) // the child's signal handler is in place
	return main, child
}

// openCounts opens count_uprobe's counts map through the pod's volume and
// returns a reader of the uprobe slot.
func (c *cluster) openCounts(t *testing.T, ns, name string) func() uint64 {
	t.Helper()
	vol, err := c.volumePath(context.Background(), ns, name)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(vol, "counts"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("opening counts through the pod's volume: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	const slotUprobe = 3 // trace_count.c's SLOT_UPROBE
	return func() uint64 {
		var v uint64
		if err := m.Lookup(uint32(slotUprobe), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// waitCounted signals pid until a signal's calls are counted (the probe
// is attached).
func waitCounted(pid int, count func() uint64) error {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		n := count()
		if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
		if count() > n {
			return nil
		}
	}
	return fmt.Errorf("no count after 30 s of signals")
}

// expectCalls signals pid once and checks that the count rises by exactly
// want.
func expectCalls(pid int, count func() uint64, want uint64) error {
	n0 := count()
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		return err
	}
	var n uint64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if n = count(); n-n0 >= want && want > 0 {
			break
		}
	}
	if want == 0 {
		time.Sleep(500 * time.Millisecond)
		n = count()
	}
	if n-n0 != want {
		return fmt.Errorf("count %d -> %d after one signal, want a rise of %d", n0, n, want)
	}
	return nil
}
