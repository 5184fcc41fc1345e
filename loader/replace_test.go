package loader_test

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
	"github.com/bpfmount/bpfmount/test/programs"
)

// openLoader opens a loader on root that fetches local OCI layouts.
func openLoader(t *testing.T, root string) *loader.Loader {
	t.Helper()
	l, err := loader.New(loader.Options{Root: root, Fetcher: bytecode.Layout{}, NodeName: "test-node"})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func newTestLoader(t *testing.T) (*loader.Loader, string) {
	t.Helper()
	testenv.RequireRoot(t)
	root := filepath.Join(testenv.BPFFS(t), "bpfmount")
	l := openLoader(t, root)
	t.Cleanup(func() { l.Close() })
	return l, root
}

func resolve(t *testing.T, l *loader.Loader, req loader.Request) *loader.Resolved {
	t.Helper()
	r, err := l.Resolve(testenv.Ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// orderHits reads tcx_order's hit counter.
func orderHits(t *testing.T, m *ebpf.Map) uint64 {
	t.Helper()
	var val [16]byte
	if err := m.Lookup(uint32(0), &val); err != nil {
		t.Fatal(err)
	}
	return binary.NativeEndian.Uint64(val[0:8])
}

// TestReplaceTCX: a tcx program upgraded in place (other globals) keeps
// its place and its map's contents; an upgrade whose map changed shape
// starts that map empty. The owners follow the program.
func TestReplaceTCX(t *testing.T) {
	l, root := newTestLoader(t)
	v := testenv.NewVeth(t)
	v1 := testenv.Layout(t, testenv.TCXOrderObject, "v1")
	wide := testenv.LayoutBytes(t, programs.TCXOrderWideObject(), "tcxorderwide.o", "v2")
	req := func(img, id string) loader.Request {
		return loader.Request{Image: bytecode.Request{Reference: img}, Hook: loader.HookTCX, Interface: v.Host, Direction: loader.Ingress,
			Priority: 100, Globals: map[string][]byte{"order_id": {byte(id[0]), 0, 0, 0}}}
	}
	r1 := resolve(t, l, req(v1, "1"))
	p1, err := l.Acquire(testenv.Ctx(t), r1, "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Send(10, 64); err != nil {
		t.Fatal(err)
	}
	before := orderHits(t, p1.Maps["order_map"])
	if before < 10 {
		t.Fatalf("%d hits after 10 frames", before)
	}

	r2 := resolve(t, l, req(v1, "2"))
	p2, rep, err := l.Replace(testenv.Ctx(t), p1.Key, r2, "vol-2")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Carried, []string{"order_map"}) || len(rep.Reset) != 0 || !slices.Equal(rep.Owners, []string{"vol-1"}) {
		t.Fatalf("replace report %+v", rep)
	}
	if ids := testenv.TCXPrograms(t, v.Host, "ingress"); !slices.Equal(ids, []ebpf.ProgramID{p2.ID}) || p2.ID == p1.ID {
		t.Fatalf("tcx ingress runs %v, want the new program %d alone (old %d)", ids, p2.ID, p1.ID)
	}
	if err := v.Send(5, 64); err != nil {
		t.Fatal(err)
	}
	if after := orderHits(t, p2.Maps["order_map"]); after < before+5 {
		t.Fatalf("hits went from %d to %d across the upgrade: the map did not carry over", before, after)
	}
	if _, err := os.Stat(filepath.Join(root, "programs", p1.Key)); !os.IsNotExist(err) {
		t.Fatalf("the old program's pins are still there: %v", err)
	}

	// The same program with a two-entry map: that map starts empty. A
	// holder of the old map (as a volume's pins are) still reads it.
	held, err := p2.Maps["order_map"].Clone()
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	r3 := resolve(t, l, req(wide, "3"))
	if r3.Identity.Digest == r2.Identity.Digest {
		t.Fatal("the wide object has the same digest")
	}
	p3, rep, err := l.Replace(testenv.Ctx(t), p2.Key, r3, "vol-3")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Carried) != 0 || !slices.Equal(rep.Reset, []string{"order_map"}) || !slices.Equal(rep.Owners, []string{"vol-1", "vol-2"}) {
		t.Fatalf("replace report %+v", rep)
	}
	if err := v.Send(3, 64); err != nil {
		t.Fatal(err)
	}
	if got := orderHits(t, p3.Maps["order_map"]); got < 3 || got >= before {
		t.Fatalf("the reset map counts %d hits, want a fresh count of about 3", got)
	}
	// The old maps live on for whoever still holds them.
	if got := orderHits(t, held); got < before+5 {
		t.Fatalf("the old map lost its contents: %d", got)
	}
	for _, o := range []string{"vol-1", "vol-2", "vol-3"} {
		if err := l.Release(p3.Key, o); err != nil {
			t.Fatal(err)
		}
	}
	if ids := testenv.TCXPrograms(t, v.Host, "ingress"); len(ids) != 0 {
		t.Fatalf("tcx programs %v left after the last owner", ids)
	}
	if f := testenv.Files(t, filepath.Join(root, "programs")); len(f) != 0 {
		t.Fatalf("pins left: %v", f)
	}
}

// TestReplaceXDPUnderTraffic: a lone XDP program replaced while numbered
// frames flow: every frame is counted once, by one program or the other,
// in one carried-over map.
func TestReplaceXDPUnderTraffic(t *testing.T) {
	l, _ := newTestLoader(t)
	v := testenv.NewVeth(t)
	obj, err := os.ReadFile(testenv.RepoPath(testenv.XDPSeqObject))
	if err != nil {
		t.Fatal(err)
	}
	v1 := testenv.Layout(t, testenv.XDPSeqObject, "v1")
	v2 := testenv.LayoutBytes(t, obj, "xdpseq-v2.o", "v2")
	req := func(img string) loader.Request {
		return loader.Request{Image: bytecode.Request{Reference: img}, Hook: loader.HookXDP, Interface: v.Host, Priority: 100}
	}
	r1, r2 := resolve(t, l, req(v1)), resolve(t, l, req(v2))
	if r1.Identity.Key() == r2.Identity.Key() {
		t.Fatal("the two versions have one identity")
	}
	p1, err := l.Acquire(testenv.Ctx(t), r1, "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	s := v.StartSeq(t, 16, 64, time.Millisecond)
	s.WaitSent(t, 200)
	p2, rep, err := l.Replace(testenv.Ctx(t), p1.Key, r2, "vol-2")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Carried, []string{"seq_map"}) {
		t.Fatalf("replace report %+v", rep)
	}
	s.WaitSent(t, s.Sent()+200)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	// Alone on the hook, or (on a kernel that chains) the dispatcher's
	// member in the old one's place.
	if !testenv.XDPRuns(t, v.Host, uint32(p2.ID)) || testenv.XDPRuns(t, v.Host, uint32(p1.ID)) {
		t.Fatalf("XDP runs %d; want the new program %d there, not the old %d", testenv.XDPProgram(t, v.Host), p2.ID, p1.ID)
	}
	var val [24]byte
	if err := p2.Maps["seq_map"].Lookup(uint32(0), &val); err != nil {
		t.Fatal(err)
	}
	count, gaps := binary.NativeEndian.Uint64(val[0:8]), binary.NativeEndian.Uint64(val[8:16])
	if gaps != 0 || count != uint64(s.Sent()) {
		t.Fatalf("counted %d of %d frames with %d gaps across the upgrade", count, s.Sent(), gaps)
	}
	for _, o := range []string{"vol-1", "vol-2"} {
		if err := l.Release(p2.Key, o); err != nil {
			t.Fatal(err)
		}
	}
	if got := testenv.XDPProgram(t, v.Host); got != 0 {
		t.Fatalf("XDP program %d left", got)
	}
}

// TestReplaceTracingRefused: a tracing link cannot swap its program, so an
// upgrade in place of a tracing program is refused up front, with the old
// program left attached and owned as it was.
func TestReplaceTracingRefused(t *testing.T) {
	l, _ := newTestLoader(t)
	testenv.Tracefs(t)
	v1 := testenv.LayoutBytes(t, programs.TraceCountObject(), "tracecount.o", "v1")
	v2 := testenv.LayoutBytes(t, programs.TraceCountObject(), "tracecount-v2.o", "v2")
	req := func(img string) loader.Request {
		return loader.Request{Image: bytecode.Request{Reference: img}, Program: "count_tracepoint",
			Hook: loader.HookTracepoint, AttachTo: "sched/sched_process_exec"}
	}
	r1 := resolve(t, l, req(v1))
	p1, err := l.Acquire(testenv.Ctx(t), r1, "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	r2 := resolve(t, l, req(v2))
	if r2.Identity.Key() == r1.Identity.Key() {
		t.Fatal("both versions have one identity")
	}
	_, _, err = l.Replace(testenv.Ctx(t), p1.Key, r2, "vol-2")
	if err == nil || fault.Of(err) != fault.Precondition || !strings.Contains(err.Error(), "tracing hooks") {
		t.Fatalf("replacing a tracepoint program: %v, want a Precondition error naming tracing hooks", err)
	}
	if p := l.Program(p1.Key); p == nil || p.ID != p1.ID {
		t.Fatalf("the old program is gone after a refused upgrade: %+v", p)
	}
	if l.Program(r2.Identity.Key()) != nil {
		t.Fatal("a refused upgrade left the new program loaded")
	}
	if err := l.Release(p1.Key, "vol-1"); err != nil {
		t.Fatal(err)
	}
}

// TestReplaceLoadsWithoutTargetLock: the new version loads without the
// interface lock (a Release of the old version goes through meanwhile),
// and the swap then finds the old version gone: the upgrade fails with
// NotFound and leaves nothing of the new version behind.
func TestReplaceLoadsWithoutTargetLock(t *testing.T) {
	l, root := newTestLoader(t)
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.TCXOrderObject, "v1")
	req := func(id string) loader.Request {
		return loader.Request{Image: bytecode.Request{Reference: img}, Hook: loader.HookTCX, Interface: v.Host, Direction: loader.Ingress,
			Priority: 100, Globals: map[string][]byte{"order_id": {byte(id[0]), 0, 0, 0}}}
	}
	p1, err := l.Acquire(testenv.Ctx(t), resolve(t, l, req("1")), "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	r2 := resolve(t, l, req("2"))
	released := make(chan error, 1)
	loader.SetReplaceLoaded(func() {
		// Release takes the interface lock: under the old locking this
		// waited for Replace, which waited for it.
		done := make(chan error, 1)
		go func() { done <- l.Release(p1.Key, "vol-1") }()
		select {
		case err := <-done:
			released <- err
		case <-time.After(10 * time.Second):
			released <- errors.New("release of the old version waited for the upgrade's load")
		}
	})
	defer loader.SetReplaceLoaded(nil)
	_, _, err = l.Replace(testenv.Ctx(t), p1.Key, r2, "vol-2")
	if rerr := <-released; rerr != nil {
		t.Fatal(rerr)
	}
	if err == nil || fault.Of(err) != fault.NotFound || !strings.Contains(err.Error(), "unloaded while its new version loaded") {
		t.Fatalf("upgrading a program released meanwhile: %v, want NotFound", err)
	}
	if l.Program(r2.Identity.Key()) != nil {
		t.Fatal("the new version is recorded")
	}
	for _, k := range []string{p1.Key, r2.Identity.Key()} {
		if _, err := os.Stat(filepath.Join(root, "programs", k)); !os.IsNotExist(err) {
			t.Fatalf("pins of %s left behind: %v", k, err)
		}
	}
	if ids := testenv.TCXPrograms(t, v.Host, "ingress"); len(ids) != 0 {
		t.Fatalf("tcx ingress still runs %v", ids)
	}
}

// TestReplaceCgroup: a cgroup_skb program upgraded in place keeps its
// place on the cgroup (one program there, now the new one) and its map's
// contents, and goes on counting what the cgroup's processes send.
func TestReplaceCgroup(t *testing.T) {
	l, root := newTestLoader(t)
	cg := filepath.Join(testenv.Cgroup2(t), testenv.RandomName("bpfmount-test-"))
	testenv.MakeCgroup(t, cg)
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	send := func() {
		t.Helper()
		if out, rc := testenv.RunInCgroup(t, cg, "udp-send", udp.LocalAddr().String()); rc != 0 {
			t.Fatalf("udp-send: %d %s", rc, out)
		}
	}
	req := func(img string) loader.Request {
		return loader.Request{Image: bytecode.Request{Reference: img}, Program: "count_skb", Hook: loader.HookCgroupSKB,
			Direction: loader.Egress, Cgroup: cg}
	}
	v1 := testenv.LayoutBytes(t, programs.CgroupHooksObject(), "cgrouphooks.o", "v1")
	v2 := testenv.LayoutBytes(t, programs.CgroupHooksObject(), "cgrouphooks-v2.o", "v2")
	p1, err := l.Acquire(testenv.Ctx(t), resolve(t, l, req(v1)), "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	send()
	before := hits(t, p1)
	if before < 10 {
		t.Fatalf("counted %d packets, want at least 10", before)
	}
	r2 := resolve(t, l, req(v2))
	if r2.Identity.Key() == p1.Key {
		t.Fatal("both versions have one identity")
	}
	p2, rep, err := l.Replace(testenv.Ctx(t), p1.Key, r2, "vol-2")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Carried, []string{"hits"}) || !slices.Equal(rep.Owners, []string{"vol-1"}) || p2.ID == p1.ID {
		t.Fatalf("replace report %+v, ids %d -> %d", rep, p1.ID, p2.ID)
	}
	f, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupInetEgress})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Programs) != 1 || res.Programs[0].ID != p2.ID {
		t.Fatalf("cgroup egress runs %+v, want the new program %d alone", res.Programs, p2.ID)
	}
	send()
	if after := hits(t, p2); after < before+10 {
		t.Fatalf("hits went from %d to %d across the upgrade: the map did not carry over or the new program does not run", before, after)
	}
	if _, err := os.Stat(filepath.Join(root, "programs", p1.Key)); !os.IsNotExist(err) {
		t.Fatalf("the old program's pins are still there: %v", err)
	}
	for _, o := range []string{"vol-1", "vol-2"} {
		if err := l.Release(p2.Key, o); err != nil {
			t.Fatal(err)
		}
	}
	if n := cgroupPrograms(t, cg, ebpf.AttachCGroupInetEgress); n != 0 {
		t.Fatalf("%d egress programs left on the cgroup", n)
	}
}
