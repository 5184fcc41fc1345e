package loader_test

import (
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// A tcx program attaches to an interface inside another network namespace
// (a pod's): the interface is looked up there, frames leaving it are seen,
// the identity differs from the same name in the daemon's namespace, and
// release detaches it.
func TestAttachInNetns(t *testing.T) {
	testenv.RequireRoot(t)
	root := filepath.Join(testenv.BPFFS(t), "bpfmount")
	l := openLoader(t, root)
	defer l.Close()
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.TCXOrderObject, "v1")
	req := loader.Request{Image: bytecode.Request{Reference: img}, Hook: loader.HookTCX, Interface: v.Peer, Direction: loader.Egress, Priority: 10}

	// In the daemon's namespace there is no such interface.
	r, err := l.Resolve(testenv.Ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(testenv.Ctx(t), r, "vol-host"); fault.Of(err) != fault.NotFound {
		t.Fatalf("attaching to %s in the daemon's namespace: got %v", v.Peer, err)
	}

	req.Netns = v.NetnsPath()
	rn, err := l.Resolve(testenv.Ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if rn.Identity.Key() == r.Identity.Key() {
		t.Fatal("the namespace is not part of the identity")
	}
	p, err := l.Acquire(testenv.Ctx(t), rn, "vol-pod")
	if err != nil {
		t.Fatal(err)
	}
	if !p.Attached {
		t.Fatal("not attached")
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
	if err := v.Send(10, 60); err != nil {
		t.Fatal(err)
	}
	if n := hits(); n < 10 {
		t.Fatalf("counted %d frames leaving %s in its namespace, want 10", n, v.Peer)
	}
	if err := l.Release(p.Key, "vol-pod"); err != nil {
		t.Fatal(err)
	}
	before := hits()
	if err := v.Send(10, 60); err != nil {
		t.Fatal(err)
	}
	if n := hits(); n != before {
		t.Fatalf("the program still runs after release (%d more frames)", n-before)
	}

	// A namespace that is gone fails before anything is loaded.
	req.Netns = "/proc/self/fd/99999"
	rg, err := l.Resolve(testenv.Ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(testenv.Ctx(t), rg, "vol-gone"); fault.Of(err) != fault.Precondition {
		t.Fatalf("a missing namespace: got %v", err)
	}
}
