package crash

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"

	"github.com/bpfmount/bpfmount/internal/cri/critest"
	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/test/programs"
)

// ctScene is a daemon process whose runtime (a fake CRI served by the
// test) reports one running container, "app" of pod uid: a probe server
// chrooted into its root, in a cgroup of its own.
type ctScene struct {
	p      *testenv.ProcDaemon
	rt     *critest.Runtime
	uid    string
	img    string
	target string
	ctr    *testenv.FakeContainer
}

func newCtScene(t *testing.T, b, server string) *ctScene {
	t.Helper()
	s := &ctScene{uid: uuid.NewString()}
	s.p, s.rt, s.img = podDaemon(t, b, testenv.TraceCountObject, `- name: own-containers
  hooks: ["uprobe"]
  attachTo: ["container:*:/bin/*"]
`)
	s.target = filepath.Join(testenv.ShortTempDir(t), "vol")
	cgroups := testenv.Cgroup2(t)
	s.ctr = testenv.StartContainer(t, server, filepath.Join(cgroups, testenv.RandomName("bpfmount-crash-")))
	return s
}

// run makes the container known to the runtime: the daemon's waiter finds
// it and attaches.
func (s *ctScene) run() {
	s.rt.RunSandbox(s.uid, "sb-1", "/proc/1/ns/net")
	s.rt.RunContainer(s.uid, "sb-1", "app", "c-1", s.ctr.PID())
}

func (s *ctScene) req() *csi.NodePublishVolumeRequest {
	req := testenv.PublishRequest("vol-crash", s.target, map[string]string{
		"image": s.img, "program": "count_uprobe", "type": "uprobe", "container": "app",
		"attachTo":                               "/bin/server:" + testenv.ProbeTargetSymbol,
		"csi.storage.k8s.io/pod.name":            "reader",
		"csi.storage.k8s.io/pod.namespace":       "team-a",
		"csi.storage.k8s.io/pod.uid":             s.uid,
		"csi.storage.k8s.io/serviceAccount.name": "default",
		"csi.storage.k8s.io/ephemeral":           "true",
	}, true)
	req.VolumeCapability = testenv.MountCapability(strconv.Itoa(mountGroup))
	return req
}

// waitAttached waits until the volume's status says attached.
func (s *ctScene) waitAttached(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := map[string]any{}
		if m, err := ebpf.LoadPinnedMap(filepath.Join(s.target, loader.StatusMap), &ebpf.LoadPinOptions{ReadOnly: true}); err == nil {
			v := make([]byte, loader.StatusSize)
			if m.Lookup(uint32(0), &v) == nil {
				_ = json.Unmarshal(bytes.TrimRight(v, "\x00"), &st)
			}
			m.Close()
		}
		if st["state"] == "attached" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container's uprobe is not attached: status %v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// links counts the links pinned under the loader's programs.
func (s *ctScene) links(t *testing.T) int {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(s.p.BPFFSRoot, "programs", "*", "link"))
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}

// assertCounts checks that the container's calls, its main process's and
// a child's, are counted exactly once from want on, and returns the new
// count.
func (s *ctScene) assertCounts(t *testing.T, m *ebpf.Map, want uint64) uint64 {
	t.Helper()
	s.ctr.Call(t, 3)
	s.ctr.Call(t, -2)
	var n uint64
	if err := m.Lookup(programs.SlotUprobe, &n); err != nil {
		t.Fatal(err)
	}
	if n != want+5 {
		t.Fatalf("counted %d calls, want %d+5: the container's uprobe is attached %s", n, want, map[bool]string{true: "more than once", false: "not at all or lost counts"}[n > want+5])
	}
	return n
}

// assertContainerProbe checks the end state after the crash and retry:
// one link, the container's calls counted exactly, still so after a plain
// daemon restart; unpublish leaves nothing and nothing counts any more.
func (s *ctScene) assertContainerProbe(t *testing.T) {
	t.Helper()
	s.waitAttached(t)
	if f := testenv.Files(t, filepath.Join(s.p.StateDir, "volumes")); len(f) != 1 {
		t.Fatalf("records %v, want one", f)
	}
	if n := s.links(t); n != 1 {
		t.Fatalf("%d links pinned, want one", n)
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(s.target, "counts"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var n uint64
	if err := m.Lookup(programs.SlotUprobe, &n); err != nil {
		t.Fatal(err)
	}
	n = s.assertCounts(t, m, n)

	s.p.Kill()
	s.p.Start(t)
	s.waitAttached(t)
	if l := s.links(t); l != 1 {
		t.Fatalf("after a restart %d links pinned, want one", l)
	}
	n = s.assertCounts(t, m, n)

	if _, err := s.p.Node.NodeUnpublishVolume(testenv.Ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-crash", TargetPath: s.target}); err != nil {
		t.Fatal(err)
	}
	testenv.AssertClean(t, s.p.StateDir, s.p.BPFFSRoot, nil, s.target)
	s.ctr.Call(t, 3)
	s.ctr.Call(t, -2)
	var after uint64
	if err := m.Lookup(programs.SlotUprobe, &after); err != nil {
		t.Fatal(err)
	}
	if after != n {
		t.Fatalf("the container's uprobe still counts after unpublish (%d -> %d)", n, after)
	}
}

// containerPublishSteps are the publish steps a container's uprobe
// passes: it is loaded and pinned at publish, attached later by its
// waiter (whose steps are failpoint.ContainerSteps).
func containerPublishSteps() []string {
	var steps []string
	for _, s := range failpoint.PublishSteps {
		if s != "loader.attached" && s != "loader.pinned" {
			steps = append(steps, s)
		}
	}
	return steps
}

// A container's uprobe survives a crash at every publish step (the
// container runs already, so the waiter attaches right after): after the
// retry and a restart it is attached once, counts every process of the
// container exactly, and unpublish leaves nothing.
func TestCrashDuringContainerPublish(t *testing.T) {
	b := bin(t)
	server := testenv.BuildProbeServer(t)
	for _, step := range containerPublishSteps() {
		t.Run(step, func(t *testing.T) {
			s := newCtScene(t, b, server)
			s.run()
			req := s.req()
			crashAt(t, s.p, step, "publish", func() error { _, err := s.p.Node.NodePublishVolume(testenv.Ctx(t), req); return err })
			s.assertContainerProbe(t)
		})
	}
}

// A crash at every step of the waiter's attach, once the container runs:
// the restarted daemon attaches it once, from where the crash left it.
func TestCrashDuringContainerAttach(t *testing.T) {
	b := bin(t)
	server := testenv.BuildProbeServer(t)
	for _, step := range failpoint.ContainerSteps {
		t.Run(step, func(t *testing.T) {
			s := newCtScene(t, b, server)
			s.p.Start(t, failpoint.Env+"="+step)
			if _, err := s.p.Node.NodePublishVolume(testenv.Ctx(t), s.req()); err != nil {
				t.Fatal(err)
			}
			s.run()
			if !s.p.Exited(20 * time.Second) {
				t.Fatalf("the daemon did not crash at %s", step)
			}
			s.p.Start(t)
			s.assertContainerProbe(t)
		})
	}
}
