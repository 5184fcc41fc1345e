package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

// loseRecord publishes a volume, stops the daemon and deletes the volume's
// record file, as a damaged record removed by hand leaves it.
func loseRecord(t *testing.T, d *testenv.Daemon, vol, target string, attrs map[string]string) {
	t.Helper()
	if _, err := d.Node.NodePublishVolume(context.Background(), publishReq(vol, target, attrs, false)); err != nil {
		t.Fatal(err)
	}
	d.Stop()
	if err := os.Remove(filepath.Join(d.StateDir, "volumes", vol+".json")); err != nil {
		t.Fatal(err)
	}
}

// unpublishLikeKubelet unpublishes and then removes the target directory,
// as kubelet does: a target left mounted cannot be removed (the pod would
// hang Terminating).
func unpublishLikeKubelet(t *testing.T, d *testenv.Daemon, vol, target string) {
	t.Helper()
	if _, err := d.Node.NodeUnpublishVolume(context.Background(), unpublishReq(vol, target)); err != nil {
		t.Fatalf("unpublish: %v", err)
	}
	if m := testenv.MountsUnder(t, target); len(m) > 0 {
		t.Fatalf("target still mounted after unpublish: %v", m)
	}
	if err := os.Remove(target); err != nil {
		t.Fatalf("kubelet's removal of the target: %v", err)
	}
}

// TestLostRecordTargetUnmountedAtStart: a volume whose record is lost
// while the daemon is down has its staging mount collected at start, and
// its target's bind mount with it; the unpublish then succeeds and leaves
// nothing.
func TestLostRecordTargetUnmountedAtStart(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	target := filepath.Join(dir, "vol")
	loseRecord(t, d, "vol-lost", target, xdpAttrs(img, v.Host))
	d.Restart(testenv.DaemonOptions{})
	if m := testenv.MountsUnder(t, target); len(m) > 0 {
		t.Fatalf("the lost volume's target is still mounted after the start's garbage collection: %v", m)
	}
	unpublishLikeKubelet(t, d, "vol-lost", target)
	if id := detached(t, v.Host); id != 0 {
		t.Fatalf("program %d still attached", id)
	}
	d.AssertClean(t, v, target)
}

// TestLostRecordAndStagingUnpublishUnmounts: the record and the staging
// mount are both gone (the staging mount removed by hand, or collected by
// an older version), so nothing names the target's bpffs; the unpublish
// still unmounts it, as an orphan of the driver's.
func TestLostRecordAndStagingUnpublishUnmounts(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	target := filepath.Join(dir, "vol")
	loseRecord(t, d, "vol-lost", target, xdpAttrs(img, v.Host))
	staging := filepath.Join(d.StateDir, "mounts", "vol-lost")
	if err := unix.Unmount(staging, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(staging); err != nil {
		t.Fatal(err)
	}
	d.Restart(testenv.DaemonOptions{})
	if m := testenv.MountsUnder(t, target); len(m) != 1 {
		t.Fatalf("mounts at the target before unpublish: %v, want the orphaned bind mount", m)
	}
	unpublishLikeKubelet(t, d, "vol-lost", target)
	if id := detached(t, v.Host); id != 0 {
		t.Fatalf("program %d still attached", id)
	}
	d.AssertClean(t, v, target)
}

// TestUnpublishLeavesForeignMount: a tmpfs at the target of a volume with
// no record is not bpfmount's: the unpublish leaves it mounted and fails
// with FailedPrecondition, saying what is there.
func TestUnpublishLeavesForeignMount(t *testing.T) {
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	target := filepath.Join(testenv.ShortTempDir(t), "vol")
	testenv.MountTmpfs(t, target)
	_, err := d.Node.NodeUnpublishVolume(context.Background(), unpublishReq("vol-unknown", target))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "tmpfs") || !strings.Contains(err.Error(), "did not mount") {
		t.Fatalf("unpublish at a foreign tmpfs: %v, want FailedPrecondition naming the tmpfs", err)
	}
	if m := testenv.MountsUnder(t, target); len(m) != 1 {
		t.Fatalf("the foreign tmpfs was touched: %v", m)
	}
	d.AssertClean(t, nil)
}

// TestUnpublishLeavesLiveVolumesMount: an unpublish of an unknown volume at
// a live volume's target leaves that volume mounted (its bpffs is still at
// its staging directory) and fails with FailedPrecondition.
func TestUnpublishLeavesLiveVolumesMount(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	target := filepath.Join(dir, "vol")
	ctx := context.Background()
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-live", target, xdpAttrs(img, v.Host), false)); err != nil {
		t.Fatal(err)
	}
	_, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-other", target))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "belongs to another volume") {
		t.Fatalf("unpublish of another volume at a live target: %v, want FailedPrecondition", err)
	}
	if m := testenv.MountsUnder(t, target); len(m) != 1 {
		t.Fatalf("the live volume's target mounts: %v, want its one bind mount", m)
	}
	counts(t, testenv.Consumer{}, filepath.Join(target, "xdp_stats_map")) // fails the test if the map went
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-live", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, target)
}
