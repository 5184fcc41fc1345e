package crash

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"

	"github.com/bpfmount/bpfmount/deploy/examples/xdp-counter/counter"
	"github.com/bpfmount/bpfmount/internal/cri/critest"
	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
)

// A crash at every step of a pod interface's deferred XDP attach, once
// the pod's sandbox runs: on a program alone where the kernel cannot
// chain, through the pod interface's dispatcher where it can. The
// restarted daemon attaches it once, from where the crash left it: the
// program counts the frames sent to the pod's eth0, exactly one program
// runs there, and unpublish leaves nothing, there or in the pins.
func TestCrashDuringPodAttach(t *testing.T) {
	b := bin(t)
	chained := dispatcher.Supported() == nil
	steps := failpoint.PodnetSteps
	if chained {
		steps = failpoint.PodChainSteps
	}
	for _, step := range steps {
		t.Run(step, func(t *testing.T) {
			s := newPodScene(t, b)
			s.p.Start(t, failpoint.Env+"="+step)
			if _, err := s.p.Node.NodePublishVolume(testenv.Ctx(t), s.req()); err != nil {
				t.Fatal(err)
			}
			s.rt.RunSandbox(s.uid, "sb-1", s.v.NetnsPath())
			if !s.p.Exited(20 * time.Second) {
				t.Fatalf("the daemon did not crash at %s", step)
			}
			s.p.Start(t)
			s.assertAttached(t, chained)

			// A plain restart keeps it as it is.
			s.p.Kill()
			s.p.Start(t)
			s.assertAttached(t, chained)

			if _, err := s.p.Node.NodeUnpublishVolume(testenv.Ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-pod", TargetPath: s.target}); err != nil {
				t.Fatal(err)
			}
			if id := s.v.PeerXDPProgram(t); id != 0 {
				t.Errorf("XDP program %d is still attached to the pod's eth0 after unpublish", id)
			}
			testenv.AssertClean(t, s.p.StateDir, s.p.BPFFSRoot, nil, s.target)
		})
	}
}

// podScene is a daemon process whose runtime (a fake CRI served by the
// test) finds pod uid's sandbox in the network namespace of v's pod end,
// named eth0 as in a pod.
type podScene struct {
	p      *testenv.ProcDaemon
	rt     *critest.Runtime
	v      *testenv.Veth
	uid    string
	img    string
	target string
}

func newPodScene(t *testing.T, b string) *podScene {
	t.Helper()
	s := &podScene{uid: uuid.NewString()}
	s.p, s.rt, s.img = podDaemon(t, b, testenv.XDPCounterObject, `- name: own-interface
  interfaces: ["pod:*"]
`)
	s.v = testenv.NewPodVeth(t, "eth0")
	s.target = filepath.Join(testenv.ShortTempDir(t), "vol")
	return s
}

func (s *podScene) req() *csi.NodePublishVolumeRequest {
	return testenv.PublishRequest("vol-pod", s.target, map[string]string{
		"image": s.img, "interface": "pod", "type": "xdp",
		"csi.storage.k8s.io/pod.name":            "reader",
		"csi.storage.k8s.io/pod.namespace":       "team-a",
		"csi.storage.k8s.io/pod.uid":             s.uid,
		"csi.storage.k8s.io/serviceAccount.name": "default",
		"csi.storage.k8s.io/ephemeral":           "true",
	}, true)
}

// assertAttached waits for the volume's status to say attached, then
// checks one record, one program pin directory and one attachment (its
// own link, or one member in one dispatcher revision), and that the
// program counts every frame sent to the pod's eth0, once.
func (s *podScene) assertAttached(t *testing.T, chained bool) {
	t.Helper()
	(&ctScene{target: s.target}).waitAttached(t)
	if f := testenv.Files(t, filepath.Join(s.p.StateDir, "volumes")); len(f) != 1 {
		t.Fatalf("records %v, want one", f)
	}
	if f := testenv.Files(t, filepath.Join(s.p.StateDir, "intents")); len(f) != 0 {
		t.Fatalf("intents left: %v", f)
	}
	if progs, _ := os.ReadDir(filepath.Join(s.p.BPFFSRoot, "programs")); len(progs) != 1 {
		t.Fatalf("%d program pin directories, want one", len(progs))
	}
	links, _ := filepath.Glob(filepath.Join(s.p.BPFFSRoot, "programs", "*", "link"))
	revs, _ := filepath.Glob(filepath.Join(s.p.BPFFSRoot, "dispatchers", "*", "rev-*"))
	slots, _ := filepath.Glob(filepath.Join(s.p.BPFFSRoot, "dispatchers", "*", "rev-*", "slot-*"))
	if chained {
		if len(links) != 0 || len(revs) != 1 || len(slots) != 1 {
			t.Fatalf("links %v, revisions %v, members %v: want one revision with one member and no link of its own", links, revs, slots)
		}
	} else if len(links) != 1 || len(revs) != 0 {
		t.Fatalf("links %v, revisions %v: want one link and no dispatcher", links, revs)
	}
	if s.v.PeerXDPProgram(t) == 0 {
		t.Fatal("no XDP program on the pod's eth0")
	}
	// The veth's own frames (the host end's neighbour discovery) may add
	// a few; a second attachment would double the count.
	const n, quiet = 50, 10
	before := s.packets(t)
	s.v.SendToPeer(t, n)
	if got := s.packets(t) - before; got < n || got >= n+quiet {
		t.Fatalf("counted %d of %d frames sent to the pod", got, n)
	}
}

func (s *podScene) packets(t *testing.T) uint64 {
	t.Helper()
	c, err := counter.Read(filepath.Join(s.target, "xdp_stats_map"))
	if err != nil {
		t.Fatal(err)
	}
	return c.Packets
}

// podDaemon is a daemon process (not started) of binary b with a fake CRI
// runtime and a policy whose one rule, given without its namespaces and
// images (team-a, and the layout made of object here), names what the
// test's pod may attach to.
func podDaemon(t *testing.T, b, object, rule string) (*testenv.ProcDaemon, *critest.Runtime, string) {
	t.Helper()
	p := testenv.NewProcDaemon(t, b)
	img := testenv.Layout(t, object, "v1")
	rt, ep := critest.Start(t)
	layoutDir := strings.TrimSuffix(strings.TrimPrefix(img, "oci:"), ":v1")
	name, rest, _ := strings.Cut(rule, "\n")
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(`apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
`+name+`
  namespaces: ["team-a"]
  images: ["oci:`+filepath.Dir(layoutDir)+`/*"]
`+rest), 0o600); err != nil {
		t.Fatal(err)
	}
	p.Args = []string{"--policy=" + pol, "--cri-endpoint=" + ep}
	return p, rt, img
}
