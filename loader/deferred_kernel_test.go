package loader_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// A pod's own interface: loaded and pinned with no link, attached later in
// the pod's namespace, moved to the namespace of a replacement sandbox
// (same interface name, same key, same maps), adopted with its namespace
// after a restart, and released without a trace.
func TestDeferredAttachInPodNetns(t *testing.T) {
	testenv.RequireRoot(t)
	root := filepath.Join(testenv.BPFFS(t), "bpfmount")
	l := openLoader(t, root)
	defer func() { l.Close() }()
	first := testenv.NewPodVeth(t, "eth0")
	img := testenv.Layout(t, testenv.TCXOrderObject, "v1")
	const uid = "0b7c6f3e-2d1a-4e5f-8a9b-0c1d2e3f4a5b"
	req := loader.Request{Image: bytecode.Request{Reference: img}, Hook: loader.HookTCX, Interface: "eth0", Pod: uid, Direction: loader.Egress, Priority: 10}
	r, err := l.Resolve(testenv.Ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	p, err := l.Acquire(testenv.Ctx(t), r, "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	if p.Attached || p.Netns != "" {
		t.Fatalf("attached at load: %+v", p)
	}
	if p.Maps[loader.StatusMap] == nil || p.Maps["order_map"] == nil {
		t.Fatalf("maps %v: want order_map and %s", p.Maps, loader.StatusMap)
	}
	m, err := p.Maps["order_map"].Clone()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	hits := func() uint64 {
		var v [16]byte
		if err := m.Lookup(uint32(0), &v); err != nil {
			t.Fatal(err)
		}
		return binary.NativeEndian.Uint64(v[:8])
	}
	send := func(v *testenv.Veth) {
		if err := v.Send(10, 60); err != nil {
			t.Fatal(err)
		}
	}
	send(first)
	if n := hits(); n != 0 {
		t.Fatalf("counted %d frames before attach", n)
	}

	if _, err := l.AttachNetns(p.Key, first.NetnsPath()); err != nil {
		t.Fatal(err)
	}
	send(first)
	if n := hits(); n < 10 {
		t.Fatalf("counted %d frames in the first sandbox, want 10", n)
	}
	// Attaching again where it is attached changes nothing.
	if _, err := l.AttachNetns(p.Key, first.NetnsPath()); err != nil {
		t.Fatal(err)
	}

	// The sandbox is replaced: same interface name, another namespace.
	second := testenv.NewPodVeth(t, "eth0")
	pa, err := l.AttachNetns(p.Key, second.NetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	if pa.Netns != second.NetnsPath() || !pa.Attached {
		t.Fatalf("after replacement: %+v", pa)
	}
	before := hits()
	send(first)
	if n := hits(); n != before {
		t.Fatalf("still runs in the old sandbox (%d frames)", n-before)
	}
	send(second)
	if n := hits(); n < before+10 {
		t.Fatalf("counted %d frames in the new sandbox, want 10", n-before)
	}

	// A restart: the adopted attachment knows its namespace.
	l.Close()
	l = openLoader(t, root)
	pd, err := l.Adopt(r.Identity, "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	if !pd.Attached || pd.Netns != second.NetnsPath() || pd.Maps[loader.StatusMap] == nil {
		t.Fatalf("adopted: %+v", pd)
	}
	// The namespace goes with its sandbox: detach keeps program and maps.
	if err := l.DetachNetns(p.Key); err != nil {
		t.Fatal(err)
	}
	before = hits()
	send(second)
	if n := hits(); n != before {
		t.Fatal("still runs after DetachNetns")
	}
	if _, err := os.Stat(filepath.Join(root, "programs", p.Key, "maps", "order_map")); err != nil {
		t.Fatalf("maps gone with the link: %v", err)
	}
	// A namespace that does not exist.
	if _, err := l.AttachNetns(p.Key, "/proc/self/fd/99999"); fault.Of(err) != fault.Precondition {
		t.Fatalf("a missing namespace: got %v", err)
	}
	if err := l.Release(p.Key, "vol-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "programs", p.Key)); !os.IsNotExist(err) {
		t.Fatalf("pins left after release: %v", err)
	}
	// tc on a pod's interface runs through the pod interface's
	// dispatcher; where the kernel cannot chain it is refused, as on a
	// host interface, and leaves nothing.
	if l.CanChain() {
		return
	}
	req.Hook = loader.HookTC
	r, err = l.Resolve(testenv.Ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(testenv.Ctx(t), r, "vol-tc"); fault.Of(err) != fault.Precondition || !strings.Contains(err.Error(), "needs freplace") {
		t.Fatalf("tc on a pod's interface: got %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "programs")); len(ents) > 0 {
		t.Fatalf("pins left after a refused tc: %v", ents)
	}
}
