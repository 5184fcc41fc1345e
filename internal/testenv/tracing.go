package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/loader"
)

// Tracefs makes sure tracefs is mounted where tracepoints need it, and
// unmounts it when the test ends if the test mounted it.
func Tracefs(t testing.TB) {
	t.Helper()
	var st unix.Statfs_t
	if unix.Statfs(loader.TracefsPath, &st) == nil && st.Type == unix.TRACEFS_MAGIC {
		return
	}
	if err := unix.Mount("tracefs", loader.TracefsPath, "tracefs", 0, ""); err != nil {
		t.Fatalf("mounting tracefs: %v", err)
	}
	t.Cleanup(func() { UnmountTracefs(t) })
}

// UnmountTracefs unmounts tracefs if mounted (a test that made the loader
// mount it puts the machine back as found).
func UnmountTracefs(t testing.TB) {
	var st unix.Statfs_t
	if unix.Statfs(loader.TracefsPath, &st) == nil && st.Type == unix.TRACEFS_MAGIC {
		if err := unix.Unmount(loader.TracefsPath, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting tracefs: %v", err)
		}
	}
}

// TracefsMounted reports whether tracefs is mounted at loader.TracefsPath.
func TracefsMounted() bool {
	var st unix.Statfs_t
	return unix.Statfs(loader.TracefsPath, &st) == nil && st.Type == unix.TRACEFS_MAGIC
}

// ProbeTargetSymbol is the function of the binary BuildProbeTarget makes.
const ProbeTargetSymbol = "bpfmount_probe_target"

// BuildProbeTarget compiles a small static C program whose main calls
// ProbeTargetSymbol as many times as its first argument says, for uprobe
// tests. It returns the binary's path.
func BuildProbeTarget(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "target.c")
	code := `#include <stdlib.h>
__attribute__((noinline)) int ` + ProbeTargetSymbol + `(int i) { asm volatile("" ::: "memory"); return i + 1; }
int main(int argc, char **argv) {
	int n = argc > 1 ? atoi(argv[1]) : 1, s = 0;
	for (int i = 0; i < n; i++) s += ` + ProbeTargetSymbol + `(i);
	return s == -1;
}
`
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "probe-target")
	if _, err := exec.LookPath("gcc"); err != nil {
		// The VMs have no compiler; test/vm attaches a uprobe there by
		// address in a binary it has.
		t.Skip("gcc not found: the uprobe target binary is built with it")
	}
	if out, err := exec.Command("gcc", "-O1", "-static", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v: %s", err, out)
	}
	return bin
}
