package vm

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
	"github.com/bpfmount/bpfmount/test/vm/progs"
)

// TCX needs no dispatcher: the existing loader orders bpfmount's programs
// on a tcx hook by priority with before/after anchors. Three requests
// published out of order run in priority order (kernel 6.6+).
func TestTCXOrderThroughLoader(t *testing.T) {
	requireVM(t)
	if !kernelAtLeast(6, 6) {
		t.Skip("skipping: tcx needs Linux 6.6 or later")
	}
	img, err := bytecode.Build(progs.Object(), "members_bpfel.o", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(t.TempDir(), "layout")
	if err := bytecode.WriteLayout(layout, "v1", img); err != nil {
		t.Fatal(err)
	}
	ref := bytecode.LayoutScheme + layout + ":v1"
	l, err := loader.New(loader.Options{Root: pinDir(t), Fetcher: bytecode.Layout{}, NodeName: "vm"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	host, peer := vethPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	le32 := func(v int32) []byte { return binary.LittleEndian.AppendUint32(nil, uint32(v)) }
	const tcxNext = -1
	progsByID := map[uint8]*loader.Program{}
	for _, p := range []struct {
		id   uint8
		prio int
	}{{3, 300}, {1, 100}, {2, 200}} {
		r, err := l.Resolve(ctx, loader.Request{
			Image: bytecode.Request{Reference: ref}, Program: progs.MembersProgTcMember,
			Hook: loader.HookTCX, Interface: host.Name, Direction: loader.Ingress, Priority: p.prio,
			Globals: map[string][]byte{progs.MembersVarMemberId: le32(int32(p.id)), progs.MembersVarVerdict: le32(tcxNext)},
		})
		if err != nil {
			t.Fatal(err)
		}
		owner := fmt.Sprintf("vol-%d", p.id)
		prog, err := l.Acquire(ctx, r, owner)
		if err != nil {
			t.Fatal(err)
		}
		progsByID[p.id] = prog
		defer l.Release(prog.Key, owner)
	}
	s := newSender(t, peer, host)
	const n = 50
	s.send(t, n)
	time.Sleep(200 * time.Millisecond)
	for id := uint8(1); id <= 3; id++ {
		var v uint64
		if err := progsByID[id].Maps[progs.MembersMapPositions].Lookup(uint32(id-1), &v); err != nil {
			t.Fatal(err)
		}
		if v != n {
			t.Errorf("program %d (priority %d) ran at position %d on %d frames, want %d", id, 100*int(id), id-1, v, n)
		}
	}
}
