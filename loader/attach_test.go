package loader_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// The program ID the loader reports (read from the link, on load and on
// adopt) is the one the kernel runs on the interface.
func TestProgramIDIsTheAttachedProgram(t *testing.T) {
	testenv.RequireRoot(t)
	v := testenv.NewVeth(t)
	root := filepath.Join(testenv.BPFFS(t), "loader")
	l := openLoader(t, root)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	r, err := l.Resolve(context.Background(), loader.Request{Image: bytecode.Request{Reference: img}, Interface: v.Host})
	if err != nil {
		t.Fatal(err)
	}
	p, err := l.Acquire(context.Background(), r, "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	attached := testenv.XDPProgram(t, v.Host)
	if attached == 0 || p.ID != ebpf.ProgramID(attached) {
		t.Fatalf("loader reports program %d; the interface runs %d", p.ID, attached)
	}
	l.Close()

	// A restarted loader adopts the pins and reads the same ID.
	l2 := openLoader(t, root)
	a, err := l2.Adopt(r.Identity, "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != p.ID || !a.Attached {
		t.Fatalf("adopted program %d (attached %v); want %d, attached", a.ID, a.Attached, p.ID)
	}
	if err := l2.Release(p.Key, "vol-1"); err != nil {
		t.Fatal(err)
	}
	if id := testenv.XDPProgram(t, v.Host); id != 0 {
		t.Fatalf("program %d still attached after the last release", id)
	}
	l2.Close()
}

// A request for an interface the node does not have is refused as
// NotFound before anything is loaded, however the name is malformed.
func TestUnknownInterfaceIsNotFound(t *testing.T) {
	testenv.RequireRoot(t)
	l, err := loader.New(loader.Options{Root: filepath.Join(testenv.BPFFS(t), "loader"), Fetcher: bytecode.Layout{}, NodeName: "test-node"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	for _, name := range []string{"bpfmnope0", "a-name-longer-than-ifnamsiz", "lo/x"} {
		r, err := l.Resolve(context.Background(), loader.Request{Image: bytecode.Request{Reference: img}, Interface: name})
		if err != nil {
			t.Fatal(err)
		}
		_, err = l.Acquire(context.Background(), r, "vol-1")
		if fault.Of(err) != fault.NotFound {
			t.Errorf("interface %q: got %v, want a NotFound fault", name, err)
		}
	}
	if len(l.Programs()) != 0 {
		t.Fatalf("refused requests left programs: %v", l.Programs())
	}
}
