package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	helmdriver "helm.sh/helm/v3/pkg/storage/driver"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kcluster "github.com/bpfmount/bpfmount/test/e2e/cluster"
)

// A pod with a tracepoint volume (the exec-events example: its program on
// sched/sched_process_exec, its ring buffer read by the example reader,
// non-root with only CAP_BPF) reports the execs of other processes: the
// one another container of the pod runs, with that container's pid and
// user, and one on the node, of a binary the test names uniquely, with its
// pid. Deleting the pod detaches and unloads the program and leaves
// nothing behind.
func TestTracingExecEvents(t *testing.T) {
	c := setup(t)
	ctx := context.Background()
	const ns, pod = "e2e-tracing", "exec-events"
	if err := c.createNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	c.installScenarioChart(t, map[string]any{
		"name":       "exec-events",
		"namespaces": []any{ns},
		"images":     []any{"oci:" + bytecodeDir + "/**"},
		"hooks":      []any{"tracepoint"},
		"attachTo":   []any{"sched/sched_process_exec"},
	})
	c.deletePodsAtEnd(t, ns, pod)

	if _, err := c.CS.CoreV1().Pods(ns).Create(ctx, execEventsPod(ns, pod), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.waitRunning(ctx, ns, pod, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	progs := driverPrograms(t, ebpf.TracePoint)
	if len(progs) != 1 {
		t.Fatalf("%d tracepoint programs pinned by the driver, want 1: %v", len(progs), progs)
	}

	// The other container's process: found by its container ID in the
	// pod's cgroup, it is the pid the event names.
	runnerPID := c.containerPID(t, ns, pod, "runner")
	ev, err := c.waitExecEvent(ctx, ns, pod, func(e execEvent) bool { return e.PID == runnerPID })
	if err != nil {
		t.Fatalf("no exec event of the runner container's process %d: %v", runnerPID, err)
	}
	if ev.Filename != "/xdp-counter-reader" || ev.UID != 65534 || ev.Comm != "xdp-counter-rea" {
		t.Fatalf("exec event of the runner container %+v, want /xdp-counter-reader run by uid 65534", ev)
	}
	t.Logf("the reader saw the runner container's %+v", ev)

	// A binary no one else runs, under a name that says whose it is.
	var rnd [6]byte
	rand.Read(rnd[:])
	bin := filepath.Join(t.TempDir(), "bpfm-e2e-"+hex.EncodeToString(rnd[:]))
	data, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	if err := cmd.Run(); err != nil {
		t.Fatalf("running %s: %v", bin, err)
	}
	ev, err = c.waitExecEvent(ctx, ns, pod, func(e execEvent) bool { return e.Filename == bin })
	if err != nil {
		t.Fatalf("no exec event of %s: %v", bin, err)
	}
	if ev.PID != uint32(cmd.Process.Pid) || ev.UID != 0 || ev.Comm != filepath.Base(bin)[:15] {
		t.Fatalf("exec event %+v, want pid %d, uid 0, comm %q", ev, cmd.Process.Pid, filepath.Base(bin)[:15])
	}
	t.Logf("the reader saw %+v", ev)

	if err := c.deletePod(ctx, ns, pod); err != nil {
		t.Fatal(err)
	}
	c.waitNothingLeft(t, progs)
}

// waitExecEvent waits until the reader logs an event that match accepts.
func (c *cluster) waitExecEvent(ctx context.Context, ns, name string, match func(execEvent) bool) (execEvent, error) {
	var ev execEvent
	var n int
	err := poll(ctx, 30*time.Second, func() (bool, error) {
		evs, err := c.execEvents(ctx, ns, name)
		if err != nil {
			return false, nil // no log yet
		}
		n = len(evs)
		for _, e := range evs {
			if match(e) {
				ev = e
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return ev, fmt.Errorf("not among the %d events the reader logged: %w", n, err)
	}
	return ev, nil
}

// containerPID is the host pid of the process of a pod's container, read
// from the container's cgroup (named by its ID) under the pod's.
func (c *cluster) containerPID(t *testing.T, ns, pod, container string) uint32 {
	t.Helper()
	p, err := c.CS.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name != container {
			continue
		}
		_, id, _ := strings.Cut(cs.ContainerID, "://")
		b, err := os.ReadFile(filepath.Join(c.podCgroup(t, ns, pod), id, "cgroup.procs"))
		if err != nil {
			t.Fatalf("the processes of container %s: %v", container, err)
		}
		first, _, _ := strings.Cut(string(b), "\n")
		pid, err := strconv.ParseUint(first, 10, 32)
		if err != nil {
			t.Fatalf("no process in container %s: %q", container, b)
		}
		return uint32(pid)
	}
	t.Fatalf("pod %s/%s has no container %s", ns, pod, container)
	return 0
}

// execEventsPod is deploy/examples/exec-events/pod.yaml on this cluster (the
// example reader image, the bytecode as a local layout), with a second
// container whose exec the reader must see: the XDP counter's reader,
// waiting on a map that is not there.
func execEventsPod(ns, name string) *corev1.Pod {
	rw, nonRoot, no, uid := false, true, false, int64(65534)
	sc := &corev1.SecurityContext{
		RunAsNonRoot: &nonRoot, RunAsUser: &uid, AllowPrivilegeEscalation: &no, ReadOnlyRootFilesystem: &nonRoot,
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"BPF"}},
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"e2e": "bpfmount"}},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{FSGroup: &uid},
			Containers: []corev1.Container{{
				Name: "reader", Image: kcluster.ExecReaderImage, ImagePullPolicy: corev1.PullNever,
				Command:         []string{"/exec-events-reader", "--map", "/run/bpf/exec/events"},
				SecurityContext: sc,
				VolumeMounts:    []corev1.VolumeMount{{Name: "bpf", MountPath: "/run/bpf/exec"}},
			}, {
				Name: "runner", Image: readerImage, ImagePullPolicy: corev1.PullNever,
				Command:         []string{"/xdp-counter-reader", "--map", "/run/none", "--interval", "1h"},
				SecurityContext: sc,
			}},
			Volumes: []corev1.Volume{{Name: "bpf", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
				// Read-write: the ring buffer's reader writes its position.
				Driver: "csi.bpfmount.io", ReadOnly: &rw,
				VolumeAttributes: map[string]string{"image": "oci:" + kcluster.ExecEventsLayout + ":v1", "attachTo": "sched/sched_process_exec"},
			}}}},
			TerminationGracePeriodSeconds: new(int64),
			AutomountServiceAccountToken:  &no,
		},
	}
}

type execEvent struct {
	PID      uint32 `json:"pid"`
	UID      uint32 `json:"uid"`
	Comm     string `json:"comm"`
	Filename string `json:"filename"`
}

// execEvents are the events the reader logged, from the log file kubelet
// writes (CRI format: time, stream, tag, line).
func (c *cluster) execEvents(ctx context.Context, ns, name string) ([]execEvent, error) {
	b, err := c.containerLog(ctx, ns, name, "reader")
	if err != nil {
		return nil, err
	}
	var out []execEvent
	s := bufio.NewScanner(bytes.NewReader(b))
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		f := strings.SplitN(s.Text(), " ", 4)
		var e execEvent
		if len(f) == 4 && f[1] == "stdout" && json.Unmarshal([]byte(f[3]), &e) == nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// containerLog is the newest log file of a pod's container.
func (c *cluster) containerLog(ctx context.Context, ns, name, container string) ([]byte, error) {
	p, err := c.CS.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	logs, _ := filepath.Glob(filepath.Join(c.Work, "pod-logs", ns+"_"+name+"_"+string(p.UID), container, "*.log"))
	if len(logs) == 0 {
		return nil, fmt.Errorf("no log file for %s/%s container %s yet", ns, name, container)
	}
	sort.Strings(logs)
	return os.ReadFile(logs[len(logs)-1])
}

// installScenarioChart installs the chart with one policy rule (and
// nothing else allowed) and uninstalls it when the test ends, so that
// each scenario test runs on its own install and leaves none.
func (c *cluster) installScenarioChart(t *testing.T, rule map[string]any) {
	t.Helper()
	ctx := context.Background()
	v := c.Values("v1", freePort())
	v["policy"] = map[string]any{"rules": []any{rule}}
	t.Cleanup(func() {
		// A failed install may have left no release: nothing to undo.
		if err := c.HelmUninstall(); err != nil && !errors.Is(err, helmdriver.ErrReleaseNotFound) {
			t.Errorf("helm uninstall: %v", err)
		}
		err := poll(ctx, 60*time.Second, func() (bool, error) {
			pods, err := c.CS.CoreV1().Pods(releaseNS).List(ctx, metav1.ListOptions{})
			return err == nil && len(pods.Items) == 0, err
		})
		if err != nil {
			t.Errorf("driver pods left after uninstall: %v", err)
		}
	})
	if err := c.HelmInstall(ctx, filepath.Join(repoRoot, "charts", "bpfmount"), v); err != nil {
		t.Fatalf("helm install: %v%s", err, c.driverPodEvents(ctx))
	}
	if err := c.WaitDaemonSet(ctx); err != nil {
		t.Fatalf("%v%s", err, c.driverPodEvents(ctx))
	}
}

// deletePodsAtEnd deletes the pods when the test ends, before the chart
// goes (cleanups run last registered first), so that a failed test leaves
// no volume for a driver that is gone.
func (c *cluster) deletePodsAtEnd(t *testing.T, ns string, names ...string) {
	t.Cleanup(func() {
		for _, n := range names {
			if err := c.deletePod(context.Background(), ns, n); err != nil {
				t.Errorf("deleting pod %s/%s: %v", ns, n, err)
			}
		}
	})
}

// driverPrograms are the IDs of the programs of type typ the driver
// pinned (under its bpffs root), lowest first.
func driverPrograms(t *testing.T, typ ebpf.ProgramType) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	for id, pt := range pinnedProgramTypes() {
		if pt == typ {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// waitNothingLeft waits until the programs are unloaded (no pin or link
// keeps them), the driver pins no program and keeps no record.
func (c *cluster) waitNothingLeft(t *testing.T, progs []ebpf.ProgramID) {
	t.Helper()
	var left []ebpf.ProgramID
	var pinned int
	var recs []string
	err := poll(context.Background(), 30*time.Second, func() (bool, error) {
		left = left[:0]
		for _, id := range progs {
			p, err := ebpf.NewProgramFromID(id)
			if err == nil {
				p.Close()
				left = append(left, id)
			} else if !errors.Is(err, os.ErrNotExist) {
				return false, err
			}
		}
		pinned, recs = c.pinnedPrograms(t), nonEmpty(t, "/run/bpfmount")
		return len(left) == 0 && pinned == 0 && len(recs) == 0, nil
	})
	if err != nil {
		t.Fatalf("after the pod went: programs %v still loaded, %d programs pinned, driver state left: %v (%v)", left, pinned, recs, err)
	}
}
