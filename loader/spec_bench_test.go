package loader

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/loader/bytecode"
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

// Resolve of a cached image as every publish makes it: fetch from an OCI
// layout, the parsed object from the digest cache, the request checked.
func BenchmarkResolve(b *testing.B) {
	obj, err := os.ReadFile(filepath.Join("..", "deploy", "examples", "xdp-counter", "bpf", "xdpcounter_bpfel.o"))
	if err != nil {
		b.Fatal(err)
	}
	img, err := bytecode.Build(obj, "xdp_counter.o", nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(b.TempDir(), "layout")
	if err := bytecode.WriteLayout(dir, "v1", img); err != nil {
		b.Fatal(err)
	}
	l, err := New(Options{Root: b.TempDir(), Fetcher: bytecode.Layout{}, NodeName: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	req := Request{Image: bytecode.Request{Reference: bytecode.LayoutScheme + dir + ":v1"}, Interface: "lo"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.Resolve(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}
