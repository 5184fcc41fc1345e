package loader

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
)

func loadSpec(t testing.TB, obj string) *ebpf.CollectionSpec {
	t.Helper()
	spec, err := ebpf.LoadCollectionSpec(filepath.Join("..", obj))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// Two loads of one cached spec with different globals, or different
// attach types, share no state they change: each gets its own value, and
// the cached spec is left as parsed.
func TestCollectionForSharesNothingMutable(t *testing.T) {
	spec := loadSpec(t, "test/programs/tcxorder_bpfel.o")
	before := spec.Variables["order_id"]
	if before == nil {
		t.Fatal("no order_id in the test object")
	}
	parsed := bytes.Clone(before.Value)
	id1 := Identity{Program: "tcx_order", Hook: HookTCX, Globals: map[string]string{"order_id": "01000000"}}
	id2 := Identity{Program: "tcx_order", Hook: HookTCX, Globals: map[string]string{"order_id": "02000000"}}
	cs1, err := collectionFor(id1, spec)
	if err != nil {
		t.Fatal(err)
	}
	cs2, err := collectionFor(id2, spec)
	if err != nil {
		t.Fatal(err)
	}
	if v1, v2 := cs1.Variables["order_id"], cs2.Variables["order_id"]; v1 == v2 || v1 == before || v1.Value[0] != 1 || v2.Value[0] != 2 {
		t.Fatalf("the loads share a variable: %x, %x", v1.Value, v2.Value)
	}
	if spec.Variables["order_id"] != before || !bytes.Equal(before.Value, parsed) {
		t.Fatalf("the cached spec's global changed: %x, want %x", before.Value, parsed)
	}
	if cs1.Programs["tcx_order"] == spec.Programs["tcx_order"] {
		t.Fatal("a load's program spec is the cached one")
	}

	cg := loadSpec(t, "test/programs/cgrouphooks_bpfel.o")
	var name string
	for n, ps := range cg.Programs {
		if ps.Type == ebpf.CGroupSKB {
			name = n
		}
	}
	parsedType := cg.Programs[name].AttachType
	in, err := collectionFor(Identity{Program: name, Hook: HookCgroupSKB, Direction: Ingress}, cg)
	if err != nil {
		t.Fatal(err)
	}
	out, err := collectionFor(Identity{Program: name, Hook: HookCgroupSKB, Direction: Egress}, cg)
	if err != nil {
		t.Fatal(err)
	}
	if in.Programs[name].AttachType != ebpf.AttachCGroupInetIngress || out.Programs[name].AttachType != ebpf.AttachCGroupInetEgress {
		t.Fatalf("attach types %v, %v; want ingress, egress", in.Programs[name].AttachType, out.Programs[name].AttachType)
	}
	if cg.Programs[name].AttachType != parsedType {
		t.Fatalf("the cached program's attach type changed to %v", cg.Programs[name].AttachType)
	}
	if len(in.Programs) != 1 || len(cg.Programs) < 2 {
		t.Fatalf("programs: %d in the load, %d in the cache; want 1 and all", len(in.Programs), len(cg.Programs))
	}
}

// In the kernel: loads of one cached spec at once, with different globals,
// each run with their own value.
func TestCollectionForConcurrentGlobals(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading programs needs root")
	}
	spec := loadSpec(t, "test/programs/tcxorder_bpfel.o")
	const n = 4
	got := make([]uint32, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			val := binary.NativeEndian.AppendUint32(nil, uint32(i+1))
			id := Identity{Program: "tcx_order", Hook: HookTCX, Globals: map[string]string{"order_id": hex.EncodeToString(val)}}
			cs, err := collectionFor(id, spec)
			if err != nil {
				errs[i] = err
				return
			}
			coll, err := ebpf.NewCollection(cs)
			if err != nil {
				errs[i] = err
				return
			}
			defer coll.Close()
			errs[i] = coll.Variables["order_id"].Get(&got[i])
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if got[i] != uint32(i+1) {
			t.Errorf("load %d runs with order_id %d", i, got[i])
		}
	}
}
