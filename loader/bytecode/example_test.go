package bytecode_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// Build an image from a compiled object, as `bpfmount image build` does,
// and store it in a local OCI layout that `oci:` references can name.
func ExampleBuild() {
	obj, err := os.ReadFile("../../deploy/examples/xdp-counter/bpf/xdpcounter_bpfel.o")
	if err != nil {
		log.Fatal(err)
	}
	// nil programs and maps: read them from the object.
	img, err := bytecode.Build(obj, "xdp_counter.o", nil, nil)
	if err != nil {
		log.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(bytecode.LabelPrograms, "=", cfg.Config.Labels[bytecode.LabelPrograms])
	fmt.Println(bytecode.LabelMaps, "=", cfg.Config.Labels[bytecode.LabelMaps])

	dir, err := os.MkdirTemp("", "layout")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := bytecode.WriteLayout(dir, "v1", img); err != nil {
		log.Fatal(err)
	}
	fmt.Println("wrote", filepath.Base(filepath.Join(dir, "index.json")))
	// Output:
	// io.ebpf.programs = {"xdp_stats":"xdp"}
	// io.ebpf.maps = {"xdp_stats_map":"per_cpu_array"}
	// wrote index.json
}

// Fetch an image through a Registry: registry references are pulled into
// its cache; `oci:` references are read from the local layout, checked as
// warily as a registry's content.
func ExampleRegistry_Fetch() {
	obj, err := os.ReadFile("../../deploy/examples/xdp-counter/bpf/xdpcounter_bpfel.o")
	if err != nil {
		log.Fatal(err)
	}
	img, err := bytecode.Build(obj, "xdp_counter.o", nil, nil)
	if err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	layout := filepath.Join(dir, "layout")
	if err := bytecode.WriteLayout(layout, "v1", img); err != nil {
		log.Fatal(err)
	}

	r, err := bytecode.NewRegistry(bytecode.RegistryOptions{
		CacheDir:         filepath.Join(dir, "cache"),
		MaxCacheBytes:    64 << 20,
		MaxUnpackedBytes: 8 << 20, // refuse layers that inflate past 8 MiB
	})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	im, err := r.Fetch(context.Background(), bytecode.Request{Reference: bytecode.LayoutScheme + layout + ":v1"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("programs:", im.ProgramNames())
	fmt.Println("maps:", im.MapNames())
	fmt.Println("object is ELF:", string(im.Object[1:4]) == "ELF")

	// A missing tag is an error that says what the layout holds.
	_, err = r.Fetch(context.Background(), bytecode.Request{Reference: bytecode.LayoutScheme + layout + ":v2"})
	fmt.Println(err != nil)
	// Output:
	// programs: [xdp_stats]
	// maps: [xdp_stats_map]
	// object is ELF: true
	// true
}
