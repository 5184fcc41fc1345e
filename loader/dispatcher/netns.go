package dispatcher

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// A chain whose Target names a network namespace (a pod's) runs every
// operation that names its interface (ifindex lookups, the XDP link's
// creation, netlink) on a locked OS thread switched into that namespace:
// the kernel resolves an ifindex in the namespace of the calling thread.
// Building a revision (loading, freplace links, pins) does not depend on
// the namespace and runs there too, harmlessly.

// ErrNetnsGone is wrapped by the error of an operation on a chain whose
// network namespace no longer exists (or is another one at that path): its
// interface went with it.
var ErrNetnsGone = errors.New("the chain's network namespace is gone")

// enter runs fn in t's network namespace ("" runs it in the caller's).
func (t Target) enter(fn func() error) error {
	if t.Netns == "" {
		return fn()
	}
	return InNetns(t.Netns, t.NetnsIno, fn)
}

// InNetns runs fn on a locked OS thread switched into the network
// namespace at path, then switches that thread back and unlocks it. A
// nonzero ino must be the namespace's inode (a path, such as
// /proc/PID/ns/net, can name another namespace later): otherwise the
// error wraps ErrNetnsGone and fn does not run.
//
// If the thread cannot return to its namespace it is never unlocked nor
// let end: the goroutine parks for good, so the runtime neither reuses a
// thread in a foreign namespace nor kills it (which would signal any child
// whose parent-death signal is tied to that thread).
func InNetns(path string, ino uint64, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := openNetns(path, ino)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering network namespace %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("returning from network namespace %s: %w", path, err))
			select {} // park: see above
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// openNetns opens the namespace at path, checking its inode.
func openNetns(path string, ino uint64) (*os.File, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fault.Errorf(fault.Precondition, "network namespace %s does not exist (the pod's sandbox may be gone): %w", path, ErrNetnsGone)
	}
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	if ino == 0 {
		return f, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("inspecting network namespace %s: %w", path, err)
	}
	if st.Ino != ino {
		f.Close()
		return nil, fault.Errorf(fault.Precondition, "network namespace %s is another namespace now (the pod's sandbox was replaced): %w", path, ErrNetnsGone)
	}
	return f, nil
}
