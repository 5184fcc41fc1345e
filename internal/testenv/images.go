package testenv

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// Objects the tests load.
var (
	XDPCounterObject = "deploy/examples/xdp-counter/bpf/xdpcounter_bpfel.o"
	TCXOrderObject   = "test/programs/tcxorder_bpfel.o"
	XDPSeqObject     = "test/programs/xdpseq_bpfel.o"
	CgroupObject     = "test/programs/cgrouphooks_bpfel.o"
	TraceCountObject = "test/programs/tracecount_bpfel.o"
	ExecEventsObject = "deploy/examples/exec-events/bpf/execevents_bpfel.o"
)

// Layout packs an object of the repository into a bytecode image in a
// temporary OCI layout and returns its `oci:` reference.
func Layout(t testing.TB, object, tag string) string {
	t.Helper()
	return LayoutAs(t, object, filepath.Base(object), tag)
}

// LayoutAs is Layout with the object packed under another file name: the
// same program as another image version.
func LayoutAs(t testing.TB, object, filename, tag string) string {
	t.Helper()
	obj, err := os.ReadFile(RepoPath(object))
	if err != nil {
		t.Fatal(err)
	}
	return LayoutBytes(t, obj, filename, tag)
}

// LayoutBytes packs an object given as bytes (e.g. embedded, in a VM test).
func LayoutBytes(t testing.TB, obj []byte, filename, tag string) string {
	t.Helper()
	img, err := bytecode.Build(obj, filename, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	if err := bytecode.WriteLayout(dir, tag, img); err != nil {
		t.Fatal(err)
	}
	return bytecode.LayoutScheme + dir + ":" + tag
}

// unmountAll unmounts dir until nothing is mounted there.
func unmountAll(dir string) {
	for i := 0; i < 16; i++ {
		if unix.Unmount(dir, unix.MNT_DETACH) != nil {
			return
		}
	}
}
