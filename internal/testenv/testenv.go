// Package testenv gives tests the real-kernel fixtures they need — a private
// bpffs, veth pairs whose peer lives in a network namespace the test owns,
// frames sent from that namespace, an in-process daemon — and guarantees
// each is removed when the test ends, so the machine is left as found.
package testenv

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// RequireRoot skips the test, saying why, unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: this test loads eBPF programs and mounts filesystems on the real kernel, which needs root (run `sudo make test`)")
	}
}

// BPFFS mounts a private bpffs in a temporary directory for the test and
// unmounts it at the end, taking every pin in it along.
func BPFFS(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bpffs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mounting a bpffs at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting bpffs %s: %v", dir, err)
		}
	})
	return dir
}

// ShortTempDir returns a temporary directory with a short path (unix socket
// paths are limited to 108 bytes) removed at the end of the test.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bpfm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A failed test may leave volumes mounted here: unmount them
		// (deepest first) so RemoveAll cannot descend into a live bpffs.
		mounts := MountsUnder(t, dir)
		for i := len(mounts) - 1; i >= 0; i-- {
			unmountAll(mounts[i])
		}
		os.RemoveAll(dir)
	})
	return dir
}

// inNetns runs fn on a thread switched into the namespace fd, then switches
// back.
func inNetns(fd int, fn func() error) error {
	return onNetnsThread(func() error { return unix.Setns(fd, unix.CLONE_NEWNET) }, fn)
}

// onNetnsThread runs enter, which moves the thread to another network
// namespace, and then fn, on a locked thread, and then moves the thread back.
// If switching back fails the thread is left locked, so the Go runtime
// discards it rather than reuse a thread in the wrong namespace.
func onNetnsThread(enter, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := enter(); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return // thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
