package integration

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

// counts reads the counter through a consumer in its own mount namespace.
func counts(t *testing.T, c testenv.Consumer, path string) (packets, bytes uint64) {
	t.Helper()
	out, code := testenv.RunConsumer(t, c, "read-counter", path)
	if code != testenv.HelperOK {
		t.Fatalf("consumer could not read %s (exit %d): %s", path, code, out)
	}
	if _, err := fmt.Sscan(out, &packets, &bytes); err != nil {
		t.Fatalf("consumer output %q: %v", out, err)
	}
	return packets, bytes
}

func xdpAttrs(image, ifname string) map[string]string {
	return map[string]string{"image": image, "interface": ifname}
}

func TestXDPCounterRisesWithTraffic(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	target := filepath.Join(dir, "vol")
	ctx := context.Background()

	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-xdp", target, xdpAttrs(img, v.Host), true)); err != nil {
		t.Fatalf("publish: %v", err)
	}
	rec, err := d.Record("vol-xdp")
	if err != nil || rec == nil {
		t.Fatalf("no record after publish: %v", err)
	}
	if !testenv.XDPRuns(t, v.Host, rec.ProgramID) {
		t.Fatalf("XDP program %d of the record does not run on %s (attached: %d)", rec.ProgramID, v.Host, testenv.XDPProgram(t, v.Host))
	}
	mapPath := filepath.Join(target, "xdp_stats_map")
	before, _ := counts(t, testenv.Consumer{}, mapPath)
	if err := v.Send(50, 100); err != nil {
		t.Fatal(err)
	}
	after, bytes := counts(t, testenv.Consumer{}, mapPath)
	if after < before+50 {
		t.Fatalf("counter went from %d to %d after 50 frames", before, after)
	}
	if bytes < 50*100 {
		t.Fatalf("byte counter %d after 50 frames of 100 bytes", bytes)
	}

	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-xdp", target)); err != nil {
		t.Fatalf("unpublish: %v", err)
	}
	d.AssertClean(t, v, target)
	// Unpublishing again is fine: kubelet retries.
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-xdp", target)); err != nil {
		t.Fatalf("second unpublish: %v", err)
	}
}

func TestTCXOrderFollowsPriority(t *testing.T) {
	d, v, img, dir := setup(t, testenv.TCXOrderObject, testenv.DaemonOptions{})
	ctx := context.Background()

	type vol struct {
		id, target  string
		order, prio int
	}
	// Published in the reverse of their run order, with a bpfmount-foreign
	// position nowhere: priority alone must decide.
	vols := []vol{
		{"vol-late", filepath.Join(dir, "late"), 3, 900},
		{"vol-early", filepath.Join(dir, "early"), 1, 10},
		{"vol-mid", filepath.Join(dir, "mid"), 2, 500},
	}
	for _, vl := range vols {
		attrs := map[string]string{
			"image": img, "interface": v.Host, "type": "tcx", "direction": "ingress",
			"priority": strconv.Itoa(vl.prio), "globals": fmt.Sprintf("order_id=%02x000000", vl.order),
		}
		if _, err := d.Node.NodePublishVolume(ctx, publishReq(vl.id, vl.target, attrs, false)); err != nil {
			t.Fatalf("publish %s: %v", vl.id, err)
		}
	}
	// The kernel's own view of the order.
	ids := testenv.TCXPrograms(t, v.Host, "ingress")
	var want []ebpf.ProgramID
	for _, id := range []string{"vol-early", "vol-mid", "vol-late"} {
		rec, _ := d.Record(id)
		want = append(want, ebpf.ProgramID(rec.ProgramID))
	}
	if fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Fatalf("tcx order on %s is %v, want %v (by priority)", v.Host, ids, want)
	}

	// The packets' view: each program saw the mark of the one before.
	if err := v.Send(10, 64); err != nil {
		t.Fatal(err)
	}
	seen := map[int]uint32{}
	for _, vl := range vols {
		m, err := ebpf.LoadPinnedMap(filepath.Join(vl.target, "order_map"), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		var val [16]byte
		if err := m.Lookup(uint32(0), &val); err != nil {
			t.Fatal(err)
		}
		m.Close()
		hits := binary.NativeEndian.Uint64(val[0:8])
		if hits < 10 {
			t.Fatalf("%s saw %d packets, want at least 10", vl.id, hits)
		}
		seen[vl.order] = binary.NativeEndian.Uint32(val[8:12])
	}
	if seen[1] != 0 || seen[2] != 1 || seen[3] != 2 {
		t.Fatalf("marks seen by programs 1,2,3 = %d,%d,%d; want 0,1,2 (each runs after the previous)", seen[1], seen[2], seen[3])
	}

	for _, vl := range vols {
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(vl.id, vl.target)); err != nil {
			t.Fatalf("unpublish %s: %v", vl.id, err)
		}
	}
	d.AssertClean(t, v, vols[0].target, vols[1].target, vols[2].target)
}

func TestPublishIsIdempotent(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	target := filepath.Join(dir, "vol")
	ctx := context.Background()
	req := publishReq("vol-idem", target, xdpAttrs(img, v.Host), false)

	for i := 0; i < 3; i++ {
		if _, err := d.Node.NodePublishVolume(ctx, req); err != nil {
			t.Fatalf("publish #%d: %v", i+1, err)
		}
	}
	if m := testenv.MountsUnder(t, target); len(m) != 1 {
		t.Fatalf("after 3 identical publishes, mountinfo has %d entries at the target, want 1: %v", len(m), m)
	}

	// A different request at the same target.
	other := publishReq("vol-idem", target, map[string]string{"image": img, "interface": v.Host, "priority": "5"}, false)
	expectCode(t, d, other, codes.AlreadyExists, "different attributes")
	ro := publishReq("vol-idem", target, xdpAttrs(img, v.Host), true)
	expectCode(t, d, ro, codes.AlreadyExists, "read-only")
	// Another volume at the same target.
	expectCode(t, d, publishReq("vol-other", target, xdpAttrs(img, v.Host), false), codes.AlreadyExists, "another bpf filesystem")
	// The same volume at another target.
	expectCode(t, d, publishReq("vol-idem", filepath.Join(dir, "elsewhere"), xdpAttrs(img, v.Host), false), codes.FailedPrecondition, "already published at")

	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-idem", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, target, filepath.Join(dir, "elsewhere"))
}

func TestForeignMountAtTarget(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	target := filepath.Join(dir, "vol")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.MountTmpfs(t, target)
	expectCode(t, d, publishReq("vol-foreign", target, xdpAttrs(img, v.Host), false), codes.FailedPrecondition, "tmpfs")
	// Unpublish never unmounts a filesystem it did not mount: with no
	// record it leaves the tmpfs and says so with FailedPrecondition.
	_, err := d.Node.NodeUnpublishVolume(context.Background(), unpublishReq("vol-foreign", target))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "tmpfs") {
		t.Fatalf("unpublish of an unknown volume at a foreign mount: %v, want FailedPrecondition naming the tmpfs", err)
	}
	if m := testenv.MountsUnder(t, target); len(m) != 1 {
		t.Fatalf("the foreign mount was touched: %v", m)
	}
}

func TestReadOnlyVolumeStopsUnprivilegedWriter(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	if err := os.Chmod(dir, 0o755); err != nil { // let uid 65534 reach the targets
		t.Fatal(err)
	}
	ctx := context.Background()
	const fsGroup = 4242
	roTarget, rwTarget := filepath.Join(dir, "ro"), filepath.Join(dir, "rw")

	ro := publishReq("vol-ro", roTarget, xdpAttrs(img, v.Host), true)
	ro.VolumeCapability = mountCap(strconv.Itoa(fsGroup))
	rw := publishReq("vol-rw", rwTarget, xdpAttrs(img, v.Host), false)
	rw.VolumeCapability = mountCap(strconv.Itoa(fsGroup))
	if _, err := d.Node.NodePublishVolume(ctx, ro); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Node.NodePublishVolume(ctx, rw); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(roTarget, "xdp_stats_map"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o440 {
		t.Fatalf("read-only pin mode %v, want 0440", st.Mode().Perm())
	}
	pod := testenv.Consumer{UID: 65534, GID: 65534, Groups: []uint32{fsGroup}, CapBPF: true}
	if v.Send(5, 64) != nil {
		t.Fatal("send")
	}
	if p, _ := counts(t, pod, filepath.Join(roTarget, "xdp_stats_map")); p < 5 {
		t.Fatalf("unprivileged reader saw %d packets, want >= 5", p)
	}
	// Refused by the read-only filesystem (EROFS) before the mode is
	// looked at.
	if out, code := testenv.RunConsumer(t, pod, "write-map", filepath.Join(roTarget, "xdp_stats_map")); code == testenv.HelperOK ||
		code != testenv.HelperDenied && !strings.Contains(out, "read-only file system") {
		t.Fatalf("unprivileged write to a read-only volume: exit %d (%s), want permission denied or read-only file system", code, strings.TrimSpace(out))
	}
	if out, code := testenv.RunConsumer(t, pod, "write-map", filepath.Join(rwTarget, "xdp_stats_map")); code != testenv.HelperOK {
		t.Fatalf("unprivileged write to a read-write volume: exit %d (%s), want success", code, strings.TrimSpace(out))
	}
	outsider := testenv.Consumer{UID: 65534, GID: 65534, CapBPF: true}
	if out, code := testenv.RunConsumer(t, outsider, "read-counter", filepath.Join(roTarget, "xdp_stats_map")); code != testenv.HelperDenied {
		t.Fatalf("a reader outside the pod's fsGroup: exit %d (%s), want permission denied", code, strings.TrimSpace(out))
	}
	for _, r := range [][2]string{{"vol-ro", roTarget}, {"vol-rw", rwTarget}} {
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(r[0], r[1])); err != nil {
			t.Fatal(err)
		}
	}
	d.AssertClean(t, v, roTarget, rwTarget)
}

func TestIdenticalRequestsShareOneProgram(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	ctx := context.Background()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, p := range [][2]string{{"vol-a", a}, {"vol-b", b}} {
		if _, err := d.Node.NodePublishVolume(ctx, publishReq(p[0], p[1], xdpAttrs(img, v.Host), true)); err != nil {
			t.Fatal(err)
		}
	}
	ra, _ := d.Record("vol-a")
	rb, _ := d.Record("vol-b")
	if ra.ProgramID != rb.ProgramID || ra.Key != rb.Key {
		t.Fatalf("identical requests got programs %d and %d", ra.ProgramID, rb.ProgramID)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-a", a)); err != nil {
		t.Fatal(err)
	}
	if !testenv.XDPRuns(t, v.Host, rb.ProgramID) {
		t.Fatalf("after unpublishing one sharer, XDP program %d no longer runs on %s", rb.ProgramID, v.Host)
	}
	before, _ := counts(t, testenv.Consumer{}, filepath.Join(b, "xdp_stats_map"))
	v.Send(20, 64)
	if after, _ := counts(t, testenv.Consumer{}, filepath.Join(b, "xdp_stats_map")); after < before+20 {
		t.Fatalf("remaining volume stopped counting: %d -> %d", before, after)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-b", b)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, a, b)
}

// TestSecondXDPProgramOnInterfaceIsRefused: where the kernel accepts
// freplace, XDP volumes on one interface chain through the dispatcher and
// run in priority order (testXDPVolumesChain); where it does
// not, a second XDP program is refused, naming the first and why.
func TestSecondXDPProgramOnInterfaceIsRefused(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	if d.Loader.CanChain() {
		testXDPVolumesChain(t, d)
		return
	}
	ctx := context.Background()
	a := filepath.Join(dir, "a")
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-first", a, xdpAttrs(img, v.Host), false)); err != nil {
		t.Fatal(err)
	}
	second := map[string]string{"image": img, "interface": v.Host, "priority": "10"}
	expectCode(t, d, publishReq("vol-second", filepath.Join(dir, "b"), second, false), codes.FailedPrecondition, "cannot chain XDP programs")
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-first", a)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, a, filepath.Join(dir, "b"))
}

// testXDPVolumesChain: two XDP volumes on one veth both count every frame;
// a third between them whose program's XDP_PASS ends the chain
// (proceedOn=dispatcher_return) stops frames before the later one, which
// proves the priority order; unpublishing it lets frames through again.
func testXDPVolumesChain(t *testing.T, d *testenv.Daemon) {
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	dir := testenv.ShortTempDir(t)
	ctx := context.Background()
	target := func(vol string) string { return filepath.Join(dir, vol) }
	publish := func(vol string, prio int, kv ...string) {
		t.Helper()
		attrs := map[string]string{"image": img, "interface": v.Host, "priority": strconv.Itoa(prio)}
		for i := 0; i+1 < len(kv); i += 2 {
			attrs[kv[i]] = kv[i+1]
		}
		if _, err := d.Node.NodePublishVolume(ctx, publishReq(vol, target(vol), attrs, false)); err != nil {
			t.Fatalf("publish %s: %v", vol, err)
		}
	}
	// Frames counted by each volume while n frames are sent. The peer's own
	// frames may add to the counts, never subtract.
	delta := func(n int, vols ...string) []uint64 {
		t.Helper()
		before := make([]uint64, len(vols))
		for i, vol := range vols {
			before[i], _ = counts(t, testenv.Consumer{}, filepath.Join(target(vol), "xdp_stats_map"))
		}
		if err := v.Send(n, 64); err != nil {
			t.Fatal(err)
		}
		out := make([]uint64, len(vols))
		for i, vol := range vols {
			after, _ := counts(t, testenv.Consumer{}, filepath.Join(target(vol), "xdp_stats_map"))
			out[i] = after - before[i]
		}
		return out
	}
	// Published in the opposite of their run order.
	publish("vol-late", 50)
	publish("vol-early", 10)
	for _, vol := range []string{"vol-late", "vol-early"} {
		rec, err := d.Record(vol)
		if err != nil || rec == nil {
			t.Fatalf("no record for %s: %v", vol, err)
		}
		if !testenv.XDPRuns(t, v.Host, rec.ProgramID) {
			t.Fatalf("the program of %s (id %d) does not run on %s", vol, rec.ProgramID, v.Host)
		}
	}
	if got := delta(30, "vol-early", "vol-late"); got[0] < 30 || got[1] < 30 {
		t.Fatalf("early/late counted %v of 30 frames; both must count every frame", got)
	}
	publish("vol-stop", 20, "proceedOn", "dispatcher_return")
	if got := delta(30, "vol-early", "vol-stop", "vol-late"); got[0] < 30 || got[1] < 30 || got[2] != 0 {
		t.Fatalf("early/stop/late counted %v of 30 frames; want 30, 30, 0: the chain runs by priority and stops at 20", got)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-stop", target("vol-stop"))); err != nil {
		t.Fatal(err)
	}
	if got := delta(30, "vol-early", "vol-late"); got[0] < 30 || got[1] < 30 {
		t.Fatalf("after unpublishing the stopper early/late counted %v of 30 frames", got)
	}
	for _, vol := range []string{"vol-early", "vol-late"} {
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(vol, target(vol))); err != nil {
			t.Fatal(err)
		}
	}
	d.AssertClean(t, v, target("vol-early"), target("vol-late"), target("vol-stop"))
}

func TestRestartKeepsProgramsAttached(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	ctx := context.Background()
	target := filepath.Join(dir, "vol")
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-restart", target, xdpAttrs(img, v.Host), false)); err != nil {
		t.Fatal(err)
	}
	id := testenv.XDPProgram(t, v.Host)
	d.Restart(testenv.DaemonOptions{})
	if got := testenv.XDPProgram(t, v.Host); got != id {
		t.Fatalf("after restart XDP program is %d, want %d", got, id)
	}
	before, _ := counts(t, testenv.Consumer{}, filepath.Join(target, "xdp_stats_map"))
	v.Send(10, 64)
	if after, _ := counts(t, testenv.Consumer{}, filepath.Join(target, "xdp_stats_map")); after < before+10 {
		t.Fatalf("not counting after restart: %d -> %d", before, after)
	}
	// Publishing the same volume again after the restart is still idempotent.
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-restart", target, xdpAttrs(img, v.Host), false)); err != nil {
		t.Fatal(err)
	}
	if m := testenv.MountsUnder(t, target); len(m) != 1 {
		t.Fatalf("mounts at target after restart+republish: %v", m)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-restart", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, target)
}

func TestUnpublishAfterPinsRemovedAndInterfaceGone(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	ctx := context.Background()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-a", a, xdpAttrs(img, v.Host), false)); err != nil {
		t.Fatal(err)
	}
	// The pod's network goes away first.
	v.Delete()
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-a", a)); err != nil {
		t.Fatalf("unpublish after the interface vanished: %v", err)
	}
	v2 := testenv.NewVeth(t)
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-b", b, xdpAttrs(img, v2.Host), false)); err != nil {
		t.Fatal(err)
	}
	// Someone removes the pins by hand, then the daemon restarts.
	os.RemoveAll(filepath.Join(d.BPFFSRoot, "programs"))
	d.Restart(testenv.DaemonOptions{})
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-b", b)); err != nil {
		t.Fatalf("unpublish after pins were removed: %v", err)
	}
	d.AssertClean(t, v2, a, b)
}

func expectCode(t *testing.T, d *testenv.Daemon, req *csi.NodePublishVolumeRequest, code codes.Code, fragment string) {
	t.Helper()
	_, err := d.Node.NodePublishVolume(context.Background(), req)
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %s", err, code)
	}
	if !strings.Contains(status.Convert(err).Message(), fragment) {
		t.Fatalf("message %q does not mention %q", status.Convert(err).Message(), fragment)
	}
}
