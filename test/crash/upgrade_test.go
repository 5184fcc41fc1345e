package crash

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/testenv"
)

// TestCrashDuringUpgrade kills the daemon at each step of an upgrade in
// place while numbered frames flow: after a restart and kubelet's retry,
// one program runs, both volumes hold it, no frame was missed or counted
// twice, and nothing is left when both go.
func TestCrashDuringUpgrade(t *testing.T) {
	b := bin(t)
	obj, err := os.ReadFile(testenv.RepoPath(testenv.XDPSeqObject))
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range failpoint.UpgradeSteps {
		t.Run(step, func(t *testing.T) {
			p := testenv.NewProcDaemon(t, b)
			v := testenv.NewVeth(t)
			v1 := testenv.Layout(t, testenv.XDPSeqObject, "v1")
			v2 := testenv.LayoutBytes(t, obj, "xdpseq-v2.o", "v2")
			dir := testenv.ShortTempDir(t)
			ta, tb := filepath.Join(dir, "a"), filepath.Join(dir, "b")
			reqA, reqB := publishReq("vol-a", ta, v1, v.Host), publishReq("vol-b", tb, v2, v.Host)
			reqA.VolumeContext["name"], reqB.VolumeContext["name"] = "seq", "seq"

			p.Start(t, failpoint.Env+"="+step)
			if _, err := p.Node.NodePublishVolume(testenv.Ctx(t), reqA); err != nil {
				t.Fatal(err)
			}
			s := v.StartSeq(t, 16, 64, time.Millisecond)
			s.WaitSent(t, 100)
			if _, err := p.Node.NodePublishVolume(testenv.Ctx(t), reqB); err == nil {
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

			id := testenv.XDPProgram(t, v.Host)
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
				if vol == "vol-a" && testenv.XDPProgram(t, v.Host) != id {
					t.Fatalf("the program changed when the older volume went")
				}
			}
			testenv.AssertClean(t, p.StateDir, p.BPFFSRoot, v, ta, tb)
			if f := testenv.Files(t, filepath.Join(p.StateDir, "upgrades")); len(f) != 0 {
				t.Fatalf("upgrade records left: %v", f)
			}
		})
	}
}
