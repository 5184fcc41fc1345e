package integration

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/mapfs"
	"github.com/bpfmount/bpfmount/internal/testenv"
)

// TestReadOnlyVolumeHoldsAgainstRoot: a root consumer keeps
// CAP_DAC_OVERRIDE (containerd's and CRI-O's default), so 0440 pins do not
// stop it; the volume's read-only bpffs does: a read-write BPF_OBJ_GET
// fails with EROFS, a read-only one works and reads the counts.
func TestReadOnlyVolumeHoldsAgainstRoot(t *testing.T) {
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	target := filepath.Join(testenv.ShortTempDir(t), "ro")
	ctx := context.Background()
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-ro-root", target, xdpAttrs(img, v.Host), true)); err != nil {
		t.Fatal(err)
	}
	pin := filepath.Join(target, "xdp_stats_map")
	root := testenv.Consumer{} // uid 0 with every capability
	out, code := testenv.RunConsumer(t, root, "write-map", pin)
	if code == testenv.HelperOK || !strings.Contains(out, "read-only file system") {
		t.Fatalf("root writing through a read-only volume: exit %d (%s), want EROFS", code, strings.TrimSpace(out))
	}
	if err := v.Send(5, 64); err != nil {
		t.Fatal(err)
	}
	if p, _ := counts(t, root, pin); p < 5 {
		t.Fatalf("read-only open as root saw %d packets, want >= 5", p)
	}
	m, err := mapfs.Inspect(target)
	if err != nil {
		t.Fatal(err)
	}
	if !m.ReadOnly || !m.SuperReadOnly {
		t.Fatalf("target %+v: want a read-only mount of a read-only bpffs", m)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-ro-root", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, target)
}

// TestRestartSealsReadOnlyVolume: a read-only volume whose bpffs is
// writable (as an older version left it) is made read-only at start.
func TestRestartSealsReadOnlyVolume(t *testing.T) {
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	target := filepath.Join(testenv.ShortTempDir(t), "ro")
	ctx := context.Background()
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-seal", target, xdpAttrs(img, v.Host), true)); err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(d.StateDir, "mounts", "vol-seal")
	d.Stop()
	if err := unix.Mount("", staging, "", unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755"); err != nil {
		t.Fatal(err)
	}
	if m, _ := mapfs.Inspect(target); m.SuperReadOnly {
		t.Fatal("could not make the volume's bpffs writable for the test")
	}
	d.Restart(testenv.DaemonOptions{})
	if m, _ := mapfs.Inspect(target); !m.SuperReadOnly || !m.ReadOnly {
		t.Fatalf("after restart the read-only volume is %+v, want sealed", m)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-seal", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, target)
}
