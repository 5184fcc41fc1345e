package crash

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
)

// TestCrashDuringChainChange kills the daemon (SIGKILL) at each step of a
// dispatcher change -- new revision loaded, its members attached, swapped
// in, old revision about to be torn down -- while a third XDP volume joins
// two that number-check every frame (xdp_seq, first and last in the
// chain). After a restart and kubelet's retry the interface runs exactly
// one revision holding the three recorded members in priority order,
// nothing else is pinned or attached, and both checkers saw every frame
// sent, without a gap, across the kill.
func TestCrashDuringChainChange(t *testing.T) {
	if err := dispatcher.Supported(); err != nil {
		t.Skipf("skipping: %v; `make test-vm` runs this test in VMs whose kernels chain", err)
	}
	b := bin(t)
	for _, step := range failpoint.ChainSteps {
		t.Run(step, func(t *testing.T) {
			p := testenv.NewProcDaemon(t, b)
			v := testenv.NewVeth(t)
			seq := testenv.Layout(t, testenv.XDPSeqObject, "v1")
			counter := testenv.Layout(t, testenv.XDPCounterObject, "v1")
			dir := testenv.ShortTempDir(t)
			target := func(vol string) string { return filepath.Join(dir, vol) }
			req := func(vol, img, prio string) *csi.NodePublishVolumeRequest {
				return testenv.PublishRequest(vol, target(vol), map[string]string{"image": img, "interface": v.Host, "priority": prio}, true)
			}
			p.Start(t)
			for _, r := range []*csi.NodePublishVolumeRequest{req("vol-first", seq, "10"), req("vol-last", seq, "90")} {
				if _, err := p.Node.NodePublishVolume(testenv.Ctx(t), r); err != nil {
					t.Fatal(err)
				}
			}
			s := v.StartSeq(t, 20, 64, time.Millisecond)
			s.WaitSent(t, s.Sent()+200)
			p.Kill()
			p.Start(t, failpoint.Env+"="+step)
			mid := req("vol-mid", counter, "50")
			// The old revision is retired after the publish has answered:
			// the call may succeed, but the daemon must die.
			p.Node.NodePublishVolume(testenv.Ctx(t), mid)
			if !p.Exited(10 * time.Second) {
				t.Fatalf("the daemon did not crash at %s", step)
			}
			s.WaitSent(t, s.Sent()+200) // frames flow with the daemon dead mid-change
			p.Start(t)
			retry(t, "publish", func() error { _, err := p.Node.NodePublishVolume(testenv.Ctx(t), mid); return err })
			s.WaitSent(t, s.Sent()+200)
			if err := s.Stop(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // let the last frames drain
			sent := s.Sent()

			assertOneRevision(t, p, v, []string{"xdp_seq", "xdp_stats", "xdp_seq"})
			for _, vol := range []string{"vol-first", "vol-last"} {
				if count, gaps := seqSeen(t, target(vol)); count != uint64(sent) || gaps != 0 {
					t.Errorf("%s: sent %d frames; it saw %d with %d gaps", vol, sent, count, gaps)
				}
			}
			for _, vol := range []string{"vol-first", "vol-mid", "vol-last"} {
				if _, err := p.Node.NodeUnpublishVolume(testenv.Ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target(vol)}); err != nil {
					t.Fatal(err)
				}
			}
			testenv.AssertClean(t, p.StateDir, p.BPFFSRoot, v, target("vol-first"), target("vol-mid"), target("vol-last"))
		})
	}
}

// assertOneRevision checks the interface's XDP chain: one pinned revision,
// the one attached, whose slots hold the named programs in order; one pin
// directory and one record per member; and no freplace link in the system
// but the live revision's.
func assertOneRevision(t *testing.T, p *testenv.ProcDaemon, v *testenv.Veth, want []string) {
	t.Helper()
	live := testenv.XDPProgram(t, v.Host)
	if live == 0 {
		t.Fatal("no dispatcher attached")
	}
	chains, _ := os.ReadDir(filepath.Join(p.BPFFSRoot, "dispatchers"))
	if len(chains) != 1 {
		t.Fatalf("%d dispatcher pin directories, want 1", len(chains))
	}
	cdir := filepath.Join(p.BPFFSRoot, "dispatchers", chains[0].Name())
	ents, _ := os.ReadDir(cdir)
	var revs []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "rev-") {
			revs = append(revs, e.Name())
		}
	}
	if len(revs) != 1 {
		t.Fatalf("revisions pinned: %v, want exactly one", revs)
	}
	rdir := filepath.Join(cdir, revs[0])
	d, err := ebpf.LoadPinnedProgram(filepath.Join(rdir, "dispatcher"), nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := d.Info()
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := info.ID(); uint32(id) != live {
		t.Fatalf("%s pins dispatcher %d but the interface runs %d", revs[0], id, live)
	}
	slots, _ := os.ReadDir(rdir)
	var got []string
	for _, e := range slots {
		// slot-<i>_<key>_<created>_<name>; fewer than ten slots here, so
		// the names sort in slot order.
		if parts := strings.SplitN(e.Name(), "_", 4); strings.HasPrefix(e.Name(), "slot-") && len(parts) == 4 {
			got = append(got, parts[3])
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s runs %v, want %v in that order", revs[0], got, want)
	}
	if f := testenv.Files(t, filepath.Join(p.StateDir, "volumes")); len(f) != len(want) {
		t.Errorf("records %v, want %d", f, len(want))
	}
	if f := testenv.Files(t, filepath.Join(p.StateDir, "intents")); len(f) != 0 {
		t.Errorf("intents left: %v", f)
	}
	if progs, _ := os.ReadDir(filepath.Join(p.BPFFSRoot, "programs")); len(progs) != len(want) {
		t.Errorf("%d program pin directories, want %d", len(progs), len(want))
	}
	// Every freplace link in the VM belongs to the live revision.
	it := new(link.Iterator)
	defer it.Close()
	n := 0
	for it.Next() {
		li, err := it.Link.Info()
		if err != nil {
			continue
		}
		if tr := li.Tracing(); tr != nil {
			n++
			if tr.TargetObjectId != live {
				t.Errorf("link %d attaches program %d to %d, not to the live dispatcher %d: left behind", it.ID, li.Program, tr.TargetObjectId, live)
			}
		}
	}
	if err := it.Err(); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if n != len(want) {
		t.Errorf("%d freplace links, want %d", n, len(want))
	}
}
