package crash

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/test/programs"
)

func tracepointReq(vol, target, image string) *csi.NodePublishVolumeRequest {
	req := testenv.PublishRequest(vol, target, map[string]string{
		"image": image, "program": "count_tracepoint", "attachTo": "sched/sched_process_exec",
	}, true)
	req.VolumeCapability = testenv.MountCapability(strconv.Itoa(mountGroup))
	return req
}

// execCount execs a process (this test binary, running no test: it is
// there in the VMs too, where /bin/true may not be) and returns the
// tracepoint counter before and after, read through the map m.
func execCount(t *testing.T, m *ebpf.Map) (before, after uint64) {
	t.Helper()
	if err := m.Lookup(programs.SlotTracepoint, &before); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(os.Args[0], "-test.run=^$").CombinedOutput(); err != nil {
		t.Fatalf("exec %s: %v: %s", os.Args[0], err, out)
	}
	if err := m.Lookup(programs.SlotTracepoint, &after); err != nil {
		t.Fatal(err)
	}
	return before, after
}

// assertTracing checks that the published tracepoint program runs, then
// unpublishes and checks that it no longer does and nothing is left.
func assertTracing(t *testing.T, p *testenv.ProcDaemon, target string) {
	t.Helper()
	if f := testenv.Files(t, filepath.Join(p.StateDir, "volumes")); len(f) != 1 {
		t.Fatalf("records %v, want one", f)
	}
	pin := filepath.Join(target, "counts")
	assertReadOnly(t, target, pin)
	m, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if before, after := execCount(t, m); after <= before {
		t.Fatalf("the tracepoint program does not run after the crash (counter %d -> %d)", before, after)
	}
	if _, err := p.Node.NodeUnpublishVolume(testenv.Ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-crash", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	testenv.AssertClean(t, p.StateDir, p.BPFFSRoot, nil, target)
	if before, after := execCount(t, m); after != before {
		t.Fatalf("the tracepoint program still runs after unpublish (counter %d -> %d)", before, after)
	}
}

// A tracepoint volume survives a crash at every publish step like a
// network one: after the retry it runs exactly once and unpublish
// detaches it.
func TestCrashDuringTracingPublish(t *testing.T) {
	b := bin(t)
	testenv.Tracefs(t)
	for _, step := range failpoint.PublishSteps {
		t.Run(step, func(t *testing.T) {
			p := testenv.NewProcDaemon(t, b)
			img := testenv.Layout(t, testenv.TraceCountObject, "v1")
			target := filepath.Join(testenv.ShortTempDir(t), "vol")
			req := tracepointReq("vol-crash", target, img)

			crashAt(t, p, step, "publish", func() error { _, err := p.Node.NodePublishVolume(testenv.Ctx(t), req); return err })
			assertTracing(t, p, target)
		})
	}
}

// A crash at every unpublish step of a tracepoint volume: the retried
// unpublish detaches it and leaves nothing.
func TestCrashDuringTracingUnpublish(t *testing.T) {
	b := bin(t)
	testenv.Tracefs(t)
	for _, step := range failpoint.UnpublishSteps {
		t.Run(step, func(t *testing.T) {
			p := testenv.NewProcDaemon(t, b)
			img := testenv.Layout(t, testenv.TraceCountObject, "v1")
			target := filepath.Join(testenv.ShortTempDir(t), "vol")
			unreq := &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-crash", TargetPath: target}

			p.Start(t)
			if _, err := p.Node.NodePublishVolume(testenv.Ctx(t), tracepointReq("vol-crash", target, img)); err != nil {
				t.Fatal(err)
			}
			m, err := ebpf.LoadPinnedMap(filepath.Join(target, "counts"), &ebpf.LoadPinOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			p.Kill()
			crashAt(t, p, step, "unpublish", func() error { _, err := p.Node.NodeUnpublishVolume(testenv.Ctx(t), unreq); return err })
			testenv.AssertClean(t, p.StateDir, p.BPFFSRoot, nil, target)
			if before, after := execCount(t, m); after != before {
				t.Fatalf("the tracepoint program still runs after unpublish (counter %d -> %d)", before, after)
			}
		})
	}
}
