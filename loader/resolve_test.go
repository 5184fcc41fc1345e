package loader

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

func TestSpecCacheBoundedByBytes(t *testing.T) {
	c := newSpecCache(1000)
	for i := 0; i < 100; i++ {
		c.put(fmt.Sprint("d", i), &ebpf.CollectionSpec{}, 100+i%50)
		if c.total > 1000 || len(c.specs) != len(c.sizes) || len(c.specs) != len(c.order) {
			t.Fatalf("after %d puts: %d bytes in %d specs", i+1, c.total, len(c.specs))
		}
	}
	if c.get("d99") == nil || c.get("d0") != nil {
		t.Error("the newest spec is gone, or the oldest stayed")
	}
	c.put("huge", &ebpf.CollectionSpec{}, 600)
	if c.get("huge") != nil {
		t.Error("a spec over a quarter of the bound was kept")
	}
}

// A request naming a program the image does not hold is refused before
// the kernel sees anything, and the error lists what it holds.
func TestResolveUnknownProgram(t *testing.T) {
	obj, err := os.ReadFile("../deploy/examples/xdp-counter/bpf/xdpcounter_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	spec, err := parseSpec(obj)
	if err != nil {
		t.Fatal(err)
	}
	img := &bytecode.Image{Reference: "oci:/x", Digest: "sha256:00", Object: obj, Programs: map[string]string{"xdp_stats": "xdp"}}
	_, err = resolve(Request{Program: "no_such_prog", Interface: "eth0"}, img, spec)
	if fault.Of(err) != fault.Invalid || !strings.Contains(err.Error(), "no_such_prog") || !strings.Contains(err.Error(), "xdp_stats") {
		t.Fatalf("got %v", err)
	}
	if _, err := parseSpec([]byte("\x7fELF garbage")); err == nil {
		t.Fatal("garbage parsed")
	}
}
