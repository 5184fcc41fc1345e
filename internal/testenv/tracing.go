package testenv

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/loader"
)

// Test packages run in parallel processes, and several mount tracefs: they
// coordinate with flock on /sys/kernel (always there, and no file is left
// behind). Users hold it shared; the first finds tracefs missing, mounts it
// and leaves a marker; the last one out (the one that gets it exclusive)
// unmounts what a test mounted and removes the marker.
const (
	tracefsLock   = "/sys/kernel"
	tracefsMarker = "/run/bpfmount-test-tracefs.mounted"
)

// Tracefs makes sure tracefs is mounted where tracepoints need it while
// the test runs, and unmounts it after the last test of any package that
// needed it, if a test mounted it.
func Tracefs(t testing.TB) {
	t.Helper()
	f := lockTracefs(t, unix.LOCK_EX)
	if !TracefsMounted() {
		if err := unix.Mount("tracefs", loader.TracefsPath, "tracefs", 0, ""); err != nil {
			f.Close()
			t.Fatalf("mounting tracefs: %v", err)
		}
		os.WriteFile(tracefsMarker, nil, 0o600)
	}
	unix.Flock(int(f.Fd()), unix.LOCK_SH)
	t.Cleanup(func() { releaseTracefs(t, f) })
}

// TracefsExclusive gives the test tracefs to itself until it ends: no
// other test mounts or unmounts it meanwhile.
func TracefsExclusive(t testing.TB) {
	t.Helper()
	f := lockTracefs(t, unix.LOCK_EX)
	t.Cleanup(func() { f.Close() })
}

func lockTracefs(t testing.TB, how int) *os.File {
	t.Helper()
	f, err := os.Open(tracefsLock)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		t.Fatal(err)
	}
	return f
}

func releaseTracefs(t testing.TB, f *os.File) {
	defer f.Close()
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return // another test still uses it: the last one out unmounts
	}
	if _, err := os.Stat(tracefsMarker); err == nil {
		UnmountTracefs(t)
		os.Remove(tracefsMarker)
	}
}

// UnmountTracefs unmounts tracefs if mounted (a test that made the loader
// mount it puts the machine back as found).
func UnmountTracefs(t testing.TB) {
	if TracefsMounted() {
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

// BuildProbeTarget returns a small static C program (probes/probe-target.c)
// whose main calls ProbeTargetSymbol as many times as its first argument
// says, for uprobe tests: prebuilt in PrebuiltEnv's directory, or compiled
// now (skipping the test without gcc).
func BuildProbeTarget(t testing.TB) string {
	t.Helper()
	return probeBinary(t, "probe-target")
}
