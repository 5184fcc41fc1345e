package integration

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/test/programs"
)

// keepPolicy lets volumes keep their programs attached up to a minute;
// local requests (these tests') are allowed.
func keepOptions(t *testing.T) testenv.DaemonOptions {
	t.Helper()
	pol, err := policy.Parse([]byte("apiVersion: bpfmount.io/v1alpha1\nkind: NodePolicy\nkeepAttached:\n  max: 1m\n"))
	if err != nil {
		t.Fatal(err)
	}
	return testenv.DaemonOptions{Configure: func(o *driver.Options) { o.Policy = policy.Static(pol) }}
}

func keepAttrs(image, ifname, keep string) map[string]string {
	a := xdpAttrs(image, ifname)
	a["keepAttached"] = keep
	return a
}

// TestKeepAttachedAcrossRestart: the last volume goes, the daemon restarts,
// a new volume of the identical request takes the program over: same
// program ID, counters continue.
func TestKeepAttachedAcrossRestart(t *testing.T) {
	opts := keepOptions(t)
	d, v, img, dir := setup(t, testenv.XDPCounterObject, opts)
	ctx := context.Background()
	first, second := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-a", first, keepAttrs(img, v.Host, "30s"), true)); err != nil {
		t.Fatal(err)
	}
	// The volume's program: attached alone, or a member of the dispatcher
	// on a kernel that chains XDP programs.
	id := record(t, d, "vol-a").ProgramID
	if !testenv.XDPRuns(t, v.Host, id) {
		t.Fatalf("program %d of vol-a does not run on %s", id, v.Host)
	}
	if err := v.Send(20, 64); err != nil {
		t.Fatal(err)
	}
	before, _ := counts(t, testenv.Consumer{}, filepath.Join(first, "xdp_stats_map"))
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-a", first)); err != nil {
		t.Fatal(err)
	}
	if !testenv.XDPRuns(t, v.Host, id) {
		t.Fatalf("after the last unpublish program %d no longer runs on %s (XDP runs %d)", id, v.Host, testenv.XDPProgram(t, v.Host))
	}
	if f := testenv.Files(t, filepath.Join(d.StateDir, "lingers")); len(f) != 1 {
		t.Fatalf("linger records %v, want one", f)
	}
	// Frames while no volume holds it still count.
	if err := v.Send(10, 64); err != nil {
		t.Fatal(err)
	}
	d.Restart(opts)
	d.Driver.CollectGarbage() // before the deadline: keeps it
	if !testenv.XDPRuns(t, v.Host, id) {
		t.Fatalf("after a restart program %d no longer runs on %s (XDP runs %d)", id, v.Host, testenv.XDPProgram(t, v.Host))
	}
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-b", second, keepAttrs(img, v.Host, "30s"), true)); err != nil {
		t.Fatal(err)
	}
	rec := record(t, d, "vol-b")
	if rec.ProgramID != id {
		t.Fatalf("the new volume has program %d, want the lingering %d", rec.ProgramID, id)
	}
	after, _ := counts(t, testenv.Consumer{}, filepath.Join(second, "xdp_stats_map"))
	if after < before+10 {
		t.Fatalf("counter went from %d to %d: it did not continue", before, after)
	}
	if f := testenv.Files(t, filepath.Join(d.StateDir, "lingers")); len(f) != 0 {
		t.Fatalf("linger records %v after the take-over", f)
	}
	// The volume that took over lingers again when it goes; the test's
	// cleanup (unmounting the private bpffs) detaches it.
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-b", second)); err != nil {
		t.Fatal(err)
	}
	if !testenv.XDPRuns(t, v.Host, id) {
		t.Fatalf("after the second last unpublish program %d no longer runs on %s (XDP runs %d)", id, v.Host, testenv.XDPProgram(t, v.Host))
	}
}

// TestKeepAttachedWindowEnds: after the window, the collector detaches the
// program and a publish loads a new one with fresh maps.
func TestKeepAttachedWindowEnds(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, keepOptions(t))
	ctx := context.Background()
	target := filepath.Join(dir, "a")
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-a", target, keepAttrs(img, v.Host, "1s"), true)); err != nil {
		t.Fatal(err)
	}
	id := record(t, d, "vol-a").ProgramID
	if err := v.Send(10, 64); err != nil {
		t.Fatal(err)
	}
	oldMap := mapID(t, filepath.Join(target, "xdp_stats_map"))
	before, _ := counts(t, testenv.Consumer{}, filepath.Join(target, "xdp_stats_map"))
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-a", target)); err != nil {
		t.Fatal(err)
	}
	if !testenv.XDPRuns(t, v.Host, id) {
		t.Fatal("program detached at once despite keepAttached")
	}
	time.Sleep(1100 * time.Millisecond)
	// A publish after the window does not take the program over, even
	// before the collector ran.
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-b", target, keepAttrs(img, v.Host, "1s"), true)); err != nil {
		t.Fatal(err)
	}
	if rec := record(t, d, "vol-b"); rec.ProgramID == id || !testenv.XDPRuns(t, v.Host, rec.ProgramID) {
		t.Fatalf("publish after the window: program %d (running: %v), want a new one running in place of %d", rec.ProgramID, testenv.XDPRuns(t, v.Host, rec.ProgramID), id)
	}
	// Fresh maps: another kernel map, which has not counted the frames
	// sent before (the peer's own frames, such as IPv6 neighbour
	// discovery on a new link, may have reached it since).
	if got := mapID(t, filepath.Join(target, "xdp_stats_map")); got == oldMap {
		t.Fatalf("the new program mounts map %d, the old program's", got)
	}
	if p, _ := counts(t, testenv.Consumer{}, filepath.Join(target, "xdp_stats_map")); p >= before {
		t.Fatalf("new program's counter is %d (the old one's %d): want fresh maps", p, before)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-b", target)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	d.Driver.CollectGarbage()
	d.AssertClean(t, v, target)
	if f := testenv.Files(t, filepath.Join(d.StateDir, "lingers")); len(f) != 0 {
		t.Fatalf("linger records %v after the deadline", f)
	}
}

// TestKeepAttachedDeadlineSurvivesRestart: the deadline passes while the
// daemon is down; the start's collection detaches the program.
func TestKeepAttachedDeadlineSurvivesRestart(t *testing.T) {
	opts := keepOptions(t)
	d, v, img, dir := setup(t, testenv.XDPCounterObject, opts)
	ctx := context.Background()
	target := filepath.Join(dir, "a")
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-a", target, keepAttrs(img, v.Host, "1s"), true)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-a", target)); err != nil {
		t.Fatal(err)
	}
	d.Stop()
	time.Sleep(1100 * time.Millisecond)
	if testenv.XDPProgram(t, v.Host) == 0 {
		t.Fatal("program detached while the daemon was down")
	}
	d.Restart(opts)
	d.AssertClean(t, v, target)
	if _, err := os.Stat(filepath.Join(d.StateDir, "lingers")); err == nil {
		if f := testenv.Files(t, filepath.Join(d.StateDir, "lingers")); len(f) != 0 {
			t.Fatalf("linger records %v after the deadline", f)
		}
	}
}

// TestNameHeldByAnotherLoad: a load under a held name with other
// attributes is refused, naming the holder; the identical one shares.
func TestNameHeldByAnotherLoad(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	other := testenv.NewVeth(t)
	ctx := context.Background()
	named := func(ifname string) map[string]string {
		a := xdpAttrs(img, ifname)
		a["name"] = "fw-edge"
		return a
	}
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-a", a, named(v.Host), true)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-b", b, named(v.Host), true)); err != nil {
		t.Fatal(err)
	}
	if ra, rb := record(t, d, "vol-a"), record(t, d, "vol-b"); ra.ProgramID != rb.ProgramID {
		t.Fatalf("identical named requests got programs %d and %d", ra.ProgramID, rb.ProgramID)
	}
	expectCode(t, d, publishReq("vol-c", c, named(other.Host), true), codes.FailedPrecondition,
		`name "fw-edge" already holds xdp program "xdp_stats" on `+v.Host)
	if id := testenv.XDPProgram(t, other.Host); id != 0 {
		t.Fatalf("refused load attached program %d to %s", id, other.Host)
	}
	for vol, tgt := range map[string]string{"vol-a": a, "vol-b": b} {
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(vol, tgt)); err != nil {
			t.Fatal(err)
		}
	}
	d.AssertClean(t, v, a, b, c)
}

// TestMapOnlyVolume: a from: volume mounts a named program's maps without
// loading anything; read-only holds against root; the program goes with
// its load volume while the reader keeps its (now still) maps.
func TestMapOnlyVolume(t *testing.T) {
	pol, err := policy.Parse([]byte(`apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: monitoring
  namespaces: ["mon"]
  names: ["fw-*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{Configure: func(o *driver.Options) { o.Policy = policy.Static(pol) }})
	ctx := context.Background()
	load, reader := filepath.Join(dir, "load"), filepath.Join(dir, "reader")
	readerAttrs := func(ns, name string) map[string]string {
		a := podAttrs("", "", ns)
		delete(a, "image")
		delete(a, "interface")
		a["from"] = name
		return a
	}
	expectCode(t, d, publishReq("vol-r", reader, readerAttrs("mon", "fw-edge"), true), codes.Unavailable, `no program is loaded under name "fw-edge"`)

	a := xdpAttrs(img, v.Host)
	a["name"] = "fw-edge"
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-load", load, a, false)); err != nil {
		t.Fatal(err)
	}
	id, top := record(t, d, "vol-load").ProgramID, testenv.XDPProgram(t, v.Host)
	if !testenv.XDPRuns(t, v.Host, id) {
		t.Fatalf("program %d of the load volume does not run on %s", id, v.Host)
	}
	expectCode(t, d, publishReq("vol-r", reader, readerAttrs("mon", "counter"), true), codes.PermissionDenied, `allows names ["fw-*"] only, not "counter"`)
	expectCode(t, d, publishReq("vol-r", reader, readerAttrs("web", "fw-edge"), true), codes.PermissionDenied, "no rule matches")
	expectCode(t, d, publishReq("vol-r", reader, readerAttrs("mon", "fw-edge"), false), codes.PermissionDenied, "read-only map-only volumes only")
	with := readerAttrs("mon", "fw-edge")
	with["image"] = img
	expectCode(t, d, publishReq("vol-r", reader, with, true), codes.InvalidArgument, "a volume either loads or reads")

	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-r", reader, readerAttrs("mon", "fw-edge"), true)); err != nil {
		t.Fatal(err)
	}
	if rec := record(t, d, "vol-r"); rec.ProgramID != id {
		t.Fatalf("map-only volume records program %d, want %d", rec.ProgramID, id)
	}
	// Nothing attached anew: the same program (or, chained, the same
	// dispatcher revision) on the hook.
	if got := testenv.XDPProgram(t, v.Host); got != top || !testenv.XDPRuns(t, v.Host, id) {
		t.Fatalf("a map-only volume changed the attachment: XDP runs %d, want %d running %d", got, top, id)
	}
	pin := filepath.Join(reader, "xdp_stats_map")
	if err := v.Send(15, 64); err != nil {
		t.Fatal(err)
	}
	seen, _ := counts(t, testenv.Consumer{}, pin)
	if seen < 15 {
		t.Fatalf("reader sees %d packets, want >= 15", seen)
	}
	if out, code := testenv.RunConsumer(t, testenv.Consumer{}, "write-map", pin); code == testenv.HelperOK || !strings.Contains(out, "read-only file system") {
		t.Fatalf("root writing through a read-only map-only volume: exit %d (%s), want EROFS", code, strings.TrimSpace(out))
	}
	// The load volume goes: the program detaches, the reader's maps stay.
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-load", load)); err != nil {
		t.Fatal(err)
	}
	if got := testenv.XDPProgram(t, v.Host); got != 0 {
		t.Fatalf("program %d still attached after its only load volume went", got)
	}
	if after, _ := counts(t, testenv.Consumer{}, pin); after < seen {
		t.Fatalf("reader's counter went from %d to %d after the program went", seen, after)
	}
	// A restart keeps the reader's volume.
	d.Restart(testenv.DaemonOptions{Configure: func(o *driver.Options) { o.Policy = policy.Static(pol) }})
	if after, _ := counts(t, testenv.Consumer{}, pin); after < seen {
		t.Fatalf("after a restart the reader's counter is %d, want >= %d", after, seen)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-r", reader)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, load, reader)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestNodeProgramsFromFile: programs the file lists are loaded, kept over
// a restart, reachable through from:, and unloaded when removed.
func TestNodeProgramsFromFile(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	other := testenv.NewVeth(t)
	file := filepath.Join(dir, "programs.yaml")
	write := func(entries ...string) {
		doc := "apiVersion: bpfmount.io/v1alpha1\nkind: NodePrograms\nprograms:\n"
		for i := 0; i < len(entries); i += 2 {
			doc += "- name: " + entries[i] + "\n  attributes:\n    image: \"" + img + "\"\n    interface: " + entries[i+1] + "\n"
		}
		if len(entries) == 0 {
			doc += "  []\n"
		}
		if err := os.WriteFile(file+".tmp", []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file+".tmp", file); err != nil {
			t.Fatal(err)
		}
	}
	watch := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); d.Driver.WatchPrograms(ctx, file, 20*time.Millisecond) }()
		return func() { cancel(); <-done }
	}
	// The program a node program's record names, or 0: the record is
	// written once it is attached, and from: finds it by the record.
	nodeProgram := func(name string) uint32 {
		ps, err := stateStore(t, d).NodePrograms()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if p.Name == name {
				return p.ProgramID
			}
		}
		return 0
	}
	write("fw-edge", v.Host)
	stop := watch()
	waitFor(t, "the node program to load", func() bool { return nodeProgram("fw-edge") != 0 })
	id := nodeProgram("fw-edge")
	if !testenv.XDPRuns(t, v.Host, id) {
		t.Fatalf("node program %d does not run on %s (XDP runs %d)", id, v.Host, testenv.XDPProgram(t, v.Host))
	}

	// A pod reads its maps.
	reader := filepath.Join(dir, "reader")
	ctx := context.Background()
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-r", reader, map[string]string{"from": "fw-edge"}, true)); err != nil {
		t.Fatal(err)
	}
	if err := v.Send(7, 64); err != nil {
		t.Fatal(err)
	}
	if p, _ := counts(t, testenv.Consumer{}, filepath.Join(reader, "xdp_stats_map")); p < 7 {
		t.Fatalf("reader sees %d packets of the node program, want >= 7", p)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-r", reader)); err != nil {
		t.Fatal(err)
	}
	if !testenv.XDPRuns(t, v.Host, id) {
		t.Fatalf("after the reader's unpublish node program %d no longer runs (XDP runs %d)", id, testenv.XDPProgram(t, v.Host))
	}

	// A restart keeps it: same program, not loaded again.
	stop()
	d.Restart(testenv.DaemonOptions{})
	stop = watch()
	time.Sleep(100 * time.Millisecond)
	if got := nodeProgram("fw-edge"); got != id || !testenv.XDPRuns(t, v.Host, id) {
		t.Fatalf("after a restart the node program is %d (running: %v), want %d still running", got, testenv.XDPRuns(t, v.Host, id), id)
	}
	d.Driver.CollectGarbage()
	if !testenv.XDPRuns(t, v.Host, id) {
		t.Fatalf("garbage collection removed node program %d (XDP runs %d)", id, testenv.XDPProgram(t, v.Host))
	}

	// Added and removed.
	write("fw-edge", v.Host, "fw-other", other.Host)
	waitFor(t, "the added node program to attach", func() bool {
		p := nodeProgram("fw-other")
		return p != 0 && testenv.XDPRuns(t, other.Host, p)
	})
	write("fw-other", other.Host)
	waitFor(t, "the removed node program to detach", func() bool { return testenv.XDPProgram(t, v.Host) == 0 })
	write()
	waitFor(t, "the last node program to detach", func() bool { return testenv.XDPProgram(t, other.Host) == 0 })
	stop()
	d.AssertClean(t, v, reader)
	if f := testenv.Files(t, filepath.Join(d.StateDir, "nodeprograms")); len(f) != 0 {
		t.Fatalf("node program records left: %v", f)
	}
}

// mapID returns the kernel ID of a pinned map.
func mapID(t *testing.T, pin string) ebpf.MapID {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatalf("the kernel gives no ID for map %s", pin)
	}
	return id
}

// seqCounts reads an xdp_seq program's seq_map through a volume.
func seqCounts(t *testing.T, target string) (count, gaps uint64) {
	t.Helper()
	val := testenv.MapValue(t, filepath.Join(target, "seq_map"))
	return binary.NativeEndian.Uint64(val[0:8]), binary.NativeEndian.Uint64(val[8:16])
}

// TestUpgradeInPlaceXDP: a named XDP program upgraded to another image
// version while numbered frames flow: every frame counted once, the
// counters continue, and the older version's volume follows the new
// program until the last volume of either version goes. On a kernel that
// chains XDP programs the upgraded program shares the hook with another
// volume's, ahead of it: the new version takes the old one's slot, and
// the neighbour counts every frame across the swap.
func TestUpgradeInPlaceXDP(t *testing.T) {
	d, v, v1, dir := setup(t, testenv.XDPSeqObject, testenv.DaemonOptions{})
	v2 := testenv.LayoutAs(t, testenv.XDPSeqObject, "xdpseq-v2.o", "v2")
	ctx := context.Background()
	attrs := func(img string) map[string]string {
		a := xdpAttrs(img, v.Host)
		a["name"] = "seq"
		return a
	}
	a, b, n := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "n")
	chained := d.Loader.CanChain()
	if chained {
		na := xdpAttrs(testenv.Layout(t, testenv.XDPCounterObject, "v1"), v.Host)
		na["priority"] = "10"
		if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-n", n, na, true)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-a", a, attrs(v1), true)); err != nil {
		t.Fatal(err)
	}
	ra := record(t, d, "vol-a")
	old := ra.ProgramID
	if chained {
		if got, want := xdpSlots(t, d, v.Host), []string{record(t, d, "vol-n").Key, ra.Key}; !slices.Equal(got, want) {
			t.Fatalf("dispatcher slots %v, want %v", got, want)
		}
	}
	s := v.StartSeq(t, 16, 64, time.Millisecond)
	s.WaitSent(t, 200)
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-b", b, attrs(v2), true)); err != nil {
		t.Fatal(err)
	}
	s.WaitSent(t, s.Sent()+200)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	ra, rb := record(t, d, "vol-a"), record(t, d, "vol-b")
	now := rb.ProgramID
	if now == old || !testenv.XDPRuns(t, v.Host, now) || testenv.XDPRuns(t, v.Host, old) {
		t.Fatalf("after the upgrade program %d (before: %d) must run on %s alone of the two; XDP runs %d", now, old, v.Host, testenv.XDPProgram(t, v.Host))
	}
	if ra.ProgramID != now || ra.Key != rb.Key {
		t.Fatalf("records after the upgrade: vol-a program %d key %s, vol-b program %d key %s; want both on %d", ra.ProgramID, ra.Key, rb.ProgramID, rb.Key, now)
	}
	count, gaps := seqCounts(t, b)
	if gaps != 0 || count != uint64(s.Sent()) {
		t.Fatalf("the upgraded program's map counted %d of %d frames with %d gaps", count, s.Sent(), gaps)
	}
	if ca, _ := seqCounts(t, a); ca != count {
		t.Fatalf("the older volume sees %d frames, the newer %d: the map was not carried over", ca, count)
	}
	if chained {
		if got, want := xdpSlots(t, d, v.Host), []string{record(t, d, "vol-n").Key, rb.Key}; !slices.Equal(got, want) {
			t.Fatalf("dispatcher slots after the upgrade %v, want %v: the new version in the old one's slot", got, want)
		}
		if p, _ := counts(t, testenv.Consumer{}, filepath.Join(n, "xdp_stats_map")); p < uint64(s.Sent()) {
			t.Fatalf("the neighbour counted %d of %d frames across the upgrade", p, s.Sent())
		}
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-a", a)); err != nil {
		t.Fatal(err)
	}
	if !testenv.XDPRuns(t, v.Host, now) {
		t.Fatalf("after the older volume went program %d no longer runs (XDP runs %d)", now, testenv.XDPProgram(t, v.Host))
	}
	d.Restart(testenv.DaemonOptions{})
	if !testenv.XDPRuns(t, v.Host, now) {
		t.Fatalf("after a restart program %d no longer runs (XDP runs %d)", now, testenv.XDPProgram(t, v.Host))
	}
	for vol, tgt := range map[string]string{"vol-b": b, "vol-n": n} {
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(vol, tgt)); err != nil {
			t.Fatal(err)
		}
	}
	d.AssertClean(t, v, a, b, n)
}

// xdpSlots returns the keys of the members of the dispatcher revision
// ifname's XDP hook runs, in slot order (from its pins:
// rev-<N>/slot-<i>_<key>_<created>_<name>).
func xdpSlots(t *testing.T, d *testenv.Daemon, ifname string) []string {
	t.Helper()
	live := testenv.XDPProgram(t, ifname)
	revs, _ := filepath.Glob(filepath.Join(d.BPFFSRoot, "dispatchers", "*-xdp", "rev-*"))
	for _, rev := range revs {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(rev, "dispatcher"), nil)
		if err != nil {
			continue
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		if id, _ := info.ID(); uint32(id) != live {
			continue
		}
		pins, err := filepath.Glob(filepath.Join(rev, "slot-*"))
		if err != nil {
			t.Fatal(err)
		}
		keys := make([]string, len(pins))
		for _, pin := range pins {
			parts := strings.SplitN(strings.TrimPrefix(filepath.Base(pin), "slot-"), "_", 3)
			i, err := strconv.Atoi(parts[0])
			if err != nil || i >= len(keys) || len(parts) < 2 {
				t.Fatalf("unexpected slot pin %s", pin)
			}
			keys[i] = parts[1]
		}
		return keys
	}
	t.Fatalf("no pinned dispatcher revision is the one %s runs (%d)", ifname, live)
	return nil
}

// TestUpgradeInPlaceTCXResetsChangedMap: an upgrade whose map changed
// shape starts it empty, and the volume's record and event say so.
func TestUpgradeInPlaceTCXResetsChangedMap(t *testing.T) {
	d, v, v1, dir := setup(t, testenv.TCXOrderObject, testenv.DaemonOptions{})
	wide := testenv.LayoutBytes(t, programs.TCXOrderWideObject(), "tcxorderwide.o", "v2")
	ctx := context.Background()
	attrs := func(img string) map[string]string {
		return map[string]string{"image": img, "interface": v.Host, "type": "tcx", "direction": "ingress", "name": "order", "globals": "order_id=01000000"}
	}
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-a", a, attrs(v1), true)); err != nil {
		t.Fatal(err)
	}
	if err := v.Send(10, 64); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-b", b, attrs(wide), true)); err != nil {
		t.Fatal(err)
	}
	rb := record(t, d, "vol-b")
	if !slices.Equal(rb.ResetMaps, []string{"order_map"}) {
		t.Fatalf("record says reset maps %v, want [order_map]", rb.ResetMaps)
	}
	if ids := testenv.TCXPrograms(t, v.Host, "ingress"); len(ids) != 1 || uint32(ids[0]) != rb.ProgramID {
		t.Fatalf("tcx ingress runs %v, want the new program %d alone", ids, rb.ProgramID)
	}
	// The new, empty map in the new volume; the old one, with its
	// counts, stays readable in the older volume.
	if got := hits(t, b); got != 0 {
		t.Fatalf("the reset map counts %d hits before any traffic", got)
	}
	if got := hits(t, a); got < 10 {
		t.Fatalf("the older volume's map counts %d hits, want >= 10", got)
	}
	if err := v.Send(4, 64); err != nil {
		t.Fatal(err)
	}
	if got := hits(t, b); got < 4 {
		t.Fatalf("the new program counted %d of 4 frames", got)
	}
	for vol, tgt := range map[string]string{"vol-a": a, "vol-b": b} {
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(vol, tgt)); err != nil {
			t.Fatal(err)
		}
	}
	d.AssertClean(t, v, a, b)
}

// TestRolloutUpgradesLingeringProgram: the DaemonSet rollout of a new
// image version with keepAttached: the old pod's volume goes, its program
// lingers, the new pod's volume upgrades it in place; no frame is missed
// and the counters continue.
func TestRolloutUpgradesLingeringProgram(t *testing.T) {
	opts := keepOptions(t)
	d, v, v1, dir := setup(t, testenv.XDPSeqObject, opts)
	v2 := testenv.LayoutAs(t, testenv.XDPSeqObject, "xdpseq-v2.o", "v2")
	ctx := context.Background()
	attrs := func(img string) map[string]string {
		a := keepAttrs(img, v.Host, "30s")
		a["name"] = "seq"
		return a
	}
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-old", a, attrs(v1), true)); err != nil {
		t.Fatal(err)
	}
	old := record(t, d, "vol-old").ProgramID
	s := v.StartSeq(t, 16, 64, time.Millisecond)
	s.WaitSent(t, 200)
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-old", a)); err != nil {
		t.Fatal(err)
	}
	s.WaitSent(t, s.Sent()+200) // no pod: the program lingers
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-new", b, attrs(v2), true)); err != nil {
		t.Fatal(err)
	}
	s.WaitSent(t, s.Sent()+200)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if count, gaps := seqCounts(t, b); gaps != 0 || count != uint64(s.Sent()) {
		t.Fatalf("counted %d of %d frames with %d gaps across the rollout", count, s.Sent(), gaps)
	}
	if rec := record(t, d, "vol-new"); !testenv.XDPRuns(t, v.Host, rec.ProgramID) || testenv.XDPRuns(t, v.Host, old) {
		t.Fatalf("XDP runs %d; the new volume records %d, which must run there, and the old version %d must not", testenv.XDPProgram(t, v.Host), rec.ProgramID, old)
	}
	if f := testenv.Files(t, filepath.Join(d.StateDir, "lingers")); len(f) != 0 {
		t.Fatalf("linger records %v after the new version took over", f)
	}
}
