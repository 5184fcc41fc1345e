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

// TestCrashDuringUpgrade kills the daemon at each step of an upgrade in
// place while numbered frames flow: after a restart and kubelet's retry,
// one program runs, both volumes hold it, no frame was missed or counted
// twice, and nothing is left when both go. Where the kernel chains XDP
// programs the upgrade is a dispatcher change (every step of one,
// MemberUpgradeSteps): the hook then runs one revision, holding the new
// version alone, and no freplace link of another revision is left.
func TestCrashDuringUpgrade(t *testing.T) {
	b := bin(t)
	chained := dispatcher.Supported() == nil
	steps := failpoint.UpgradeSteps
	if chained {
		steps = failpoint.MemberUpgradeSteps
	}
	for _, step := range steps {
		t.Run(step, func(t *testing.T) {
			p := testenv.NewProcDaemon(t, b)
			v := testenv.NewVeth(t)
			v1 := testenv.Layout(t, testenv.XDPSeqObject, "v1")
			v2 := testenv.LayoutAs(t, testenv.XDPSeqObject, "xdpseq-v2.o", "v2")
			dir := testenv.ShortTempDir(t)
			ta, tb := filepath.Join(dir, "a"), filepath.Join(dir, "b")
			reqA, reqB := publishReq("vol-a", ta, v1, v.Host), publishReq("vol-b", tb, v2, v.Host)
			reqA.VolumeContext["name"], reqB.VolumeContext["name"] = "seq", "seq"

			// The older version published by a daemon without the
			// failpoint: chain steps happen at its publish too.
			p.Start(t)
			if _, err := p.Node.NodePublishVolume(testenv.Ctx(t), reqA); err != nil {
				t.Fatal(err)
			}
			s := v.StartSeq(t, 16, 64, time.Millisecond)
			s.WaitSent(t, 100)
			p.Kill()
			p.Start(t, failpoint.Env+"="+step)
			// The old revision is torn down after the publish answered:
			// at chain.retiring the call may succeed, but the daemon dies.
			if _, err := p.Node.NodePublishVolume(testenv.Ctx(t), reqB); err == nil && step != "chain.retiring" {
				t.Fatalf("the upgrading publish succeeded although the daemon was to crash at %s", step)
			}
			if !p.Exited(5 * time.Second) {
				t.Fatalf("the daemon did not crash at %s", step)
			}
			s.WaitSent(t, s.Sent()+100) // frames while the daemon is down
			p.Start(t)
			retry(t, "publish", func() error { _, err := p.Node.NodePublishVolume(testenv.Ctx(t), reqB); return err })
			s.WaitSent(t, s.Sent()+100)
			if err := s.Stop(); err != nil {
				t.Fatal(err)
			}

			running := xdpRunning(t, v.Host)
			if len(running) != 1 {
				t.Fatalf("XDP on %s runs %v, want one program", v.Host, running)
			}
			if chained {
				assertLiveRevisionOnly(t, p, v)
			}
			if pins, err := os.ReadDir(filepath.Join(p.BPFFSRoot, "programs")); err != nil || len(pins) != 1 {
				t.Fatalf("pin directories %v (%v), want the new program's alone", pins, err)
			}
			count, gaps := seqSeen(t, tb)
			if gaps != 0 || count != uint64(s.Sent()) {
				t.Fatalf("counted %d of %d frames with %d gaps across the crash", count, s.Sent(), gaps)
			}
			if ca, _ := seqSeen(t, ta); ca != count {
				t.Fatalf("the older volume sees %d frames, the newer %d", ca, count)
			}
			// The older volume first: the program stays for the newer.
			for i, vol := range []string{"vol-a", "vol-b"} {
				tgt := []string{ta, tb}[i]
				if _, err := p.Node.NodeUnpublishVolume(testenv.Ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: tgt}); err != nil {
					t.Fatal(err)
				}
				if got := xdpRunning(t, v.Host); vol == "vol-a" && !slices.Equal(got, running) {
					t.Fatalf("XDP on %s runs %v after the older volume went, want %v", v.Host, got, running)
				}
			}
			testenv.AssertClean(t, p.StateDir, p.BPFFSRoot, v, ta, tb)
			if f := testenv.Files(t, filepath.Join(p.StateDir, "upgrades")); len(f) != 0 {
				t.Fatalf("upgrade records left: %v", f)
			}
		})
	}
}

// xdpRunning returns the programs an interface's XDP hook runs: its lone
// program, or the members of the dispatcher attached there.
func xdpRunning(t *testing.T, ifname string) []ebpf.ProgramID {
	t.Helper()
	top := testenv.XDPProgram(t, ifname)
	if top == 0 {
		return nil
	}
	if members := testenv.Extensions(t, top); len(members) > 0 {
		slices.Sort(members)
		return members
	}
	return []ebpf.ProgramID{ebpf.ProgramID(top)}
}

// assertLiveRevisionOnly checks that the one dispatcher's pins hold one
// revision, the one the interface runs, and that every freplace link in
// the system attaches to it: an interrupted change left nothing behind.
func assertLiveRevisionOnly(t *testing.T, p *testenv.ProcDaemon, v *testenv.Veth) {
	t.Helper()
	live := testenv.XDPProgram(t, v.Host)
	// A revision swapped out goes after a grace period, in the background.
	var revs []string
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		revs, _ = filepath.Glob(filepath.Join(p.BPFFSRoot, "dispatchers", "*", "rev-*"))
		if len(revs) == 1 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("dispatcher revisions pinned: %v, want one", revs)
		}
	}
	d, err := ebpf.LoadPinnedProgram(filepath.Join(revs[0], "dispatcher"), nil)
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
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		li, err := it.Link.Info()
		if err != nil {
			continue
		}
		if tr := li.Tracing(); tr != nil && tr.TargetObjectId != live {
			t.Errorf("link %d attaches program %d to %d, not to the live dispatcher %d: left behind", it.ID, li.Program, tr.TargetObjectId, live)
		}
	}
	if err := it.Err(); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	slots, _ := filepath.Glob(filepath.Join(revs[0], "slot-*"))
	if len(slots) != 1 || !strings.Contains(filepath.Base(slots[0]), "_xdp_seq") {
		t.Fatalf("the live revision holds %v, want the one xdp_seq member", slots)
	}
}
