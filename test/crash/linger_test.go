package crash

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/testenv"
)

// lingerDaemon is a daemon whose policy lets programs stay attached up to
// a minute after their last volume.
func lingerDaemon(t *testing.T) *testenv.ProcDaemon {
	t.Helper()
	p := testenv.NewProcDaemon(t, bin(t))
	pol := filepath.Join(testenv.ShortTempDir(t), "policy.yaml")
	if err := os.WriteFile(pol, []byte("apiVersion: bpfmount.io/v1alpha1\nkind: NodePolicy\nkeepAttached:\n  max: 1m\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.Args = []string{"--policy", pol}
	return p
}

// waitDetached waits until nothing is attached to ifname's XDP hook.
func waitDetached(t *testing.T, ifname string, within time.Duration) {
	t.Helper()
	for end := time.Now().Add(within); testenv.XDPProgram(t, ifname) != 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("program %d still attached to %s %s after its keepAttached deadline", testenv.XDPProgram(t, ifname), ifname, within)
		}
	}
}

// TestCrashWhileLingering kills the daemon at each keepAttached step: the
// program stays attached until its deadline, is then detached (by the
// running daemon's timer or the next start's collection), and nothing is
// left behind.
func TestCrashWhileLingering(t *testing.T) {
	for _, step := range failpoint.LingerSteps {
		t.Run(step, func(t *testing.T) {
			p := lingerDaemon(t)
			v := testenv.NewVeth(t)
			img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
			target := filepath.Join(testenv.ShortTempDir(t), "vol")
			req := publishReq("vol-crash", target, img, v.Host)
			// Long enough for a daemon to start before the deadline
			// in a slow VM: the step is reached by its timer.
			req.VolumeContext["keepAttached"] = "5s"
			unreq := &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-crash", TargetPath: target}

			crashAtUnpublish := step == "unpublish.linger"
			if crashAtUnpublish {
				p.Start(t, failpoint.Env+"="+step)
			} else {
				p.Start(t)
			}
			if _, err := p.Node.NodePublishVolume(testenv.Ctx(t), req); err != nil {
				t.Fatal(err)
			}
			// The program alone on the hook, or the dispatcher's member.
			running := xdpRunning(t, v.Host)
			if len(running) != 1 {
				t.Fatalf("XDP on %s runs %v, want the volume's program", v.Host, running)
			}
			if crashAtUnpublish {
				if _, err := p.Node.NodeUnpublishVolume(testenv.Ctx(t), unreq); err == nil {
					t.Fatalf("unpublish succeeded although the daemon was to crash at %s", step)
				}
				if !p.Exited(5 * time.Second) {
					t.Fatalf("the daemon did not crash at %s", step)
				}
				p.Start(t)
				retry(t, "unpublish", func() error { _, err := p.Node.NodeUnpublishVolume(testenv.Ctx(t), unreq); return err })
			} else {
				if _, err := p.Node.NodeUnpublishVolume(testenv.Ctx(t), unreq); err != nil {
					t.Fatal(err)
				}
				p.Kill()
				// The deadline timer of the next daemon crashes it.
				p.Start(t, failpoint.Env+"="+step)
				if !p.Exited(10 * time.Second) {
					t.Fatalf("the daemon did not crash at %s", step)
				}
				p.Start(t)
			}
			if step != "linger.released" {
				// Released or not, the program outlives the crash until
				// its deadline.
				if got := xdpRunning(t, v.Host); !slices.Equal(got, running) && !(step == "linger.expire" && len(got) == 0) {
					t.Fatalf("after the crash XDP on %s runs %v, want %v", v.Host, got, running)
				}
			}
			waitDetached(t, v.Host, 10*time.Second)
			retry(t, "clean state", func() error {
				if f := testenv.Files(t, filepath.Join(p.StateDir, "lingers")); len(f) > 0 {
					return os.ErrExist
				}
				return nil
			})
			testenv.AssertClean(t, p.StateDir, p.BPFFSRoot, v, target)
		})
	}
}
