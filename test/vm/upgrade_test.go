package vm

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/test/programs"
)

// TestDriverTCUpgradeInPlace: through the driver, the middle of three tc
// programs chained by the dispatcher is upgraded in place (a named volume
// of another image version): the new version runs in the old one's slot
// (the later program still sees the marks of two programs before it), its
// map carried over (its counts continue), and the older version's volume
// follows it.
func TestDriverTCUpgradeInPlace(t *testing.T) {
	requireVM(t)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	v := testenv.NewVeth(t)
	v1 := testenv.LayoutBytes(t, programs.TCXOrderObject(), "tcx_order.o", "v1")
	v2 := testenv.LayoutBytes(t, programs.TCXOrderObject(), "tcx_order-v2.o", "v2")
	dir := testenv.ShortTempDir(t)
	ctx := context.Background()
	target := func(vol string) string { return filepath.Join(dir, vol) }
	publish := func(vol, img string, order, prio int, name string) {
		t.Helper()
		// tcx_order returns TCX_NEXT (-1, TC_ACT_UNSPEC): proceed on unspec.
		attrs := map[string]string{"image": img, "interface": v.Host, "type": "tc", "direction": "ingress",
			"priority": fmt.Sprint(prio), "proceedOn": "unspec,pipe,dispatcher_return", "globals": fmt.Sprintf("order_id=%02x000000", order)}
		if name != "" {
			attrs["name"] = name
		}
		if _, err := d.Node.NodePublishVolume(ctx, volReq(vol, target(vol), attrs)); err != nil {
			t.Fatalf("publish %s: %v", vol, err)
		}
	}
	// hits and the mark the volume's program saw last (how many programs
	// ran before it).
	order := func(vol string) (hits uint64, seen uint32) {
		t.Helper()
		val := testenv.MapValue(t, filepath.Join(target(vol), "order_map"))
		return binary.NativeEndian.Uint64(val[0:8]), binary.NativeEndian.Uint32(val[8:12])
	}
	record := func(vol string) *state.Record {
		t.Helper()
		r, err := d.Record(vol)
		if err != nil || r == nil {
			t.Fatalf("record of %s: %v", vol, err)
		}
		return r
	}
	publish("vol-c", v1, 3, 300, "")
	publish("vol-a", v1, 1, 100, "")
	publish("vol-b", v1, 2, 200, "mid")
	v.Send(10, 64)
	before, _ := order("vol-b")
	old := record("vol-b").ProgramID
	revs := d.Loader.Chains()[0].Revisions

	publish("vol-b2", v2, 2, 200, "mid")
	rb, rb2 := record("vol-b"), record("vol-b2")
	if rb2.ProgramID == old || rb.ProgramID != rb2.ProgramID || rb.Key != rb2.Key {
		t.Fatalf("after the upgrade vol-b holds %d (%s), vol-b2 %d (%s); want both on a new program (was %d)", rb.ProgramID, rb.Key, rb2.ProgramID, rb2.Key, old)
	}
	if got := d.Loader.Chains()[0].Revisions; got != revs+1 {
		t.Fatalf("the upgrade built %d revisions, want one", got-revs)
	}
	v.Send(10, 64)
	for vol, want := range map[string]uint32{"vol-a": 0, "vol-b2": 1, "vol-c": 2} {
		if _, seen := order(vol); seen != want {
			t.Errorf("%s's program saw mark %d, want %d: the chain order changed", vol, seen, want)
		}
	}
	hits, _ := order("vol-b2")
	if hits < before+10 {
		t.Fatalf("the upgraded program's map counts %d hits (before the upgrade: %d): it did not carry over", hits, before)
	}
	if h, _ := order("vol-b"); h != hits {
		t.Fatalf("the older volume's map counts %d, the newer's %d: not one map", h, hits)
	}
	var targets []string
	for _, vol := range []string{"vol-a", "vol-b", "vol-b2", "vol-c"} {
		if _, err := d.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target(vol)}); err != nil {
			t.Fatal(err)
		}
		targets = append(targets, target(vol))
	}
	d.AssertClean(t, v, targets...)
}
