package loader_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// exampleLayout builds a bytecode image from the repository's example XDP
// object and stores it in an OCI layout under dir, returning its reference.
func exampleLayout(dir string) (string, error) {
	obj, err := os.ReadFile(filepath.Join("..", "deploy", "examples", "xdp-counter", "bpf", "xdpcounter_bpfel.o"))
	if err != nil {
		return "", err
	}
	// nil programs and maps: the labels are read from the object itself.
	img, err := bytecode.Build(obj, "xdp_counter.o", nil, nil)
	if err != nil {
		return "", err
	}
	layout := filepath.Join(dir, "xdp-counter")
	if err := bytecode.WriteLayout(layout, "v1", img); err != nil {
		return "", err
	}
	return bytecode.LayoutScheme + layout + ":v1", nil
}

// exampleLoader is a loader whose pins would go under a temporary
// directory, and the reference of the example image in a layout there.
// Resolve needs neither root nor a bpffs.
func exampleLoader() (l *loader.Loader, ref string, done func()) {
	dir, err := os.MkdirTemp("", "loader-example")
	if err != nil {
		log.Fatal(err)
	}
	if ref, err = exampleLayout(dir); err != nil {
		log.Fatal(err)
	}
	l, err = loader.New(loader.Options{Root: filepath.Join(dir, "pins"), Fetcher: bytecode.Layout{}, NodeName: "node-1"})
	if err != nil {
		log.Fatal(err)
	}
	return l, ref, func() { l.Close(); os.RemoveAll(dir) }
}

// A Request names an image and where to attach its program. Resolve fetches
// the image and checks the request against it without touching the kernel:
// it fills in the program (the image's only one), the hook (from the image's
// labels) and the defaults, and returns the Identity two equal requests
// share. Its Key names the attachment's pin directory.
func ExampleLoader_Resolve() {
	l, ref, done := exampleLoader()
	defer done()

	r, err := l.Resolve(context.Background(), loader.Request{
		Image:     bytecode.Request{Reference: ref},
		Interface: "eth0",
		Priority:  50,
	})
	if err != nil {
		log.Fatal(err)
	}
	id := r.Identity
	fmt.Println("program:", id.Program)
	fmt.Println("hook:", id.Hook, id.XDPMode)
	fmt.Println("priority:", id.Priority)
	fmt.Println("proceed on:", id.ProceedOn)
	fmt.Println("maps:", r.Maps)
	fmt.Println("key length:", len(id.Key()))
	// Output:
	// program: xdp_stats
	// hook: xdp auto
	// priority: 50
	// proceed on: [pass dispatcher_return]
	// maps: [xdp_stats_map]
	// key length: 24
}

// A request the image cannot satisfy is refused by Resolve, before anything
// is loaded; the error says what to change.
func ExampleLoader_Resolve_refused() {
	l, ref, done := exampleLoader()
	defer done()

	_, err := l.Resolve(context.Background(), loader.Request{
		Image:     bytecode.Request{Reference: ref},
		Interface: "eth0",
		Direction: loader.Ingress, // tc and tcx only
	})
	fmt.Println(err)
	// Output:
	// direction applies to tc and tcx, not xdp
}

// Acquire loads, attaches and pins the resolved program, or joins the
// attachment an identical request made; each owner releases its share with
// Release, and the last one detaches and unpins. This needs root (or
// CAP_BPF and CAP_NET_ADMIN), a bpffs under Root and the interface, so the
// example is compiled but not run.
func ExampleLoader_Acquire() {
	ctx := context.Background()
	l, err := loader.New(loader.Options{Root: "/sys/fs/bpf/bpfmount", Fetcher: bytecode.Layout{}, NodeName: "node-1"})
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close() // closes descriptors only: pinned links stay attached

	r, err := l.Resolve(ctx, loader.Request{
		Image:     bytecode.Request{Reference: "oci:/srv/bytecode/xdp-counter:v1"},
		Interface: "eth0",
	})
	if err != nil {
		log.Fatal(err)
	}
	a, err := l.Acquire(ctx, r, "volume-a")
	if err != nil {
		log.Fatal(err)
	}
	b, err := l.Acquire(ctx, r, "volume-b") // the same identity: shared
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(a.ID == b.ID, b.Shared, b.Owners)

	// Maps belong to the loader: clone them to keep them past Release.
	m, err := b.Maps["xdp_stats_map"].Clone()
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	for _, owner := range []string{"volume-a", "volume-b"} {
		if err := l.Release(a.Key, owner); err != nil {
			log.Fatal(err)
		}
	}
}

// After a restart, Adopt re-opens the pins of an identity the caller
// recorded (the driver keeps it in its volume records), so the program is
// shared and released as before the restart. It needs root, so the example
// is compiled but not run.
func ExampleLoader_Adopt() {
	l, err := loader.New(loader.Options{Root: "/sys/fs/bpf/bpfmount", Fetcher: bytecode.Layout{}})
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	recorded := loader.Identity{ /* as stored at publish time */ }
	p, err := l.Adopt(recorded, "volume-a")
	if err != nil {
		log.Fatal(err) // fault.NotFound when the pins are gone, e.g. after a reboot
	}
	fmt.Println(p.Key == recorded.Key(), p.Attached)
}
