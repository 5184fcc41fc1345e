package loader

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
)

// The per-publish copy of a cached, parsed object down to one program.
func BenchmarkCollectionFor(b *testing.B) {
	spec, err := ebpf.LoadCollectionSpec(filepath.Join("..", "deploy", "examples", "xdp-counter", "bpf", "xdpcounter_bpfel.o"))
	if err != nil {
		b.Fatal(err)
	}
	id := Identity{Program: "xdp_stats", Hook: HookXDP}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := collectionFor(id, spec); err != nil {
			b.Fatal(err)
		}
	}
}

// Parsing the object, which the loader does once per image digest.
func BenchmarkParseObject(b *testing.B) {
	obj, err := os.ReadFile(filepath.Join("..", "deploy", "examples", "xdp-counter", "bpf", "xdpcounter_bpfel.o"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj)); err != nil {
			b.Fatal(err)
		}
	}
}
