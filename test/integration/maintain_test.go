package integration

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

func TestInterfaceRemovalKeepsVolumeReadable(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Driver.Maintain(ctx, 0)
	target := filepath.Join(dir, "vol")
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-gone", target, xdpAttrs(img, v.Host), true)); err != nil {
		t.Fatal(err)
	}
	v.Send(7, 64)
	v.Delete()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ps := d.Loader.Programs()
		if len(ps) == 1 && !ps[0].Attached {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the loader never noticed the interface went away")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p, _ := counts(t, testenv.Consumer{}, filepath.Join(target, "xdp_stats_map")); p < 7 {
		t.Fatalf("the map is not readable after the interface went: %d packets", p)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-gone", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, nil, target)
}

func TestGarbageCollectionRemovesOnlyOrphans(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	target := filepath.Join(dir, "vol")
	ctx := context.Background()
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-kept", target, xdpAttrs(img, v.Host), false)); err != nil {
		t.Fatal(err)
	}
	// Orphans: a pin directory and a staging mount no volume owns.
	orphanPins := filepath.Join(d.BPFFSRoot, "programs", "0123456789abcdef01234567")
	if err := os.MkdirAll(filepath.Join(orphanPins, "maps"), 0o700); err != nil {
		t.Fatal(err)
	}
	orphanStaging := filepath.Join(d.StateDir, "mounts", "vol-orphan")
	os.MkdirAll(orphanStaging, 0o700)
	testenv.MountTmpfs(t, orphanStaging)

	staging, pins := d.Driver.CollectGarbage()
	if len(staging) != 1 || staging[0] != "vol-orphan" || len(pins) != 1 {
		t.Fatalf("collected staging %v and pins %v; want the two orphans", staging, pins)
	}
	if _, err := os.Stat(orphanPins); !os.IsNotExist(err) {
		t.Fatal("orphaned pins survived")
	}
	if testenv.XDPProgram(t, v.Host) == 0 {
		t.Fatal("garbage collection detached a volume's program")
	}
	if m := testenv.MountsUnder(t, target); len(m) != 1 {
		t.Fatalf("garbage collection touched a live volume: %v", m)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-kept", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, target)
}
