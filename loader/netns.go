package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"net"

	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
)

// A network hook with Identity.Netns set attaches to an interface inside
// that network namespace (a pod's own), not the daemon's. The kernel
// resolves an ifindex in the namespace of the calling thread, so the
// lookup and the attach run on a thread switched into the namespace; the
// link, once made, belongs to the device whatever thread holds it.
//
// Netns is part of the identity and of the lock name: an eth0 in one pod
// and an eth0 (even of the same index) in another never share anything.

// hookInNetns is how attach dispatches an interface in another namespace.
const hookInNetns Hook = "(in a network namespace)"

// attachPath is the hook attach dispatches on.
func attachPath(id Identity) Hook {
	if id.Netns != "" && !IsCgroupHook(id.Hook) {
		return hookInNetns
	}
	return id.Hook
}

// netnsLockName is the lock of an interface in a namespace. Interface
// names cannot hold ':'.
func netnsLockName(id Identity) string { return "netns:" + id.Netns + ":" + id.Interface }

// checkNetns checks a network namespace path before anything is loaded.
func checkNetns(id Identity) error {
	if IsCgroupHook(id.Hook) {
		return fault.Errorf(fault.Invalid, "hook %s attaches to a cgroup, not to an interface in a network namespace", id.Hook)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(id.Netns, &st); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fault.Errorf(fault.Precondition, "network namespace %s does not exist (the pod's sandbox may be gone)", id.Netns)
		}
		return fmt.Errorf("inspecting network namespace %s: %w", id.Netns, err)
	}
	if st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC {
		return fault.Errorf(fault.Invalid, "%s is not a network namespace", id.Netns)
	}
	return nil
}

// inNetns runs fn on a locked thread switched into the network namespace
// at path, then switches back (dispatcher.InNetns: a thread that cannot
// switch back is parked, never reused nor ended).
func inNetns(path string, fn func() error) error {
	return dispatcher.InNetns(path, 0, fn)
}

// attachInNetns looks the interface up and attaches e inside its network
// namespace. Caller holds the interface's lock.
func (l *Loader) attachInNetns(e *entry) error {
	return inNetns(e.id.Netns, func() error {
		idx, err := ifindex(e.id.Interface)
		if err != nil {
			return fault.Errorf(fault.NotFound, "interface %q not found in network namespace %s", e.id.Interface, e.id.Netns)
		}
		ifc := &net.Interface{Index: idx, Name: e.id.Interface}
		switch e.id.Hook {
		case HookXDP:
			return l.attachXDP(e, ifc)
		case HookTCX:
			return l.attachTCX(e, ifc)
		}
		return fault.Errorf(fault.Precondition, "hook %s cannot attach inside a network namespace yet: use tcx or xdp", e.id.Hook)
	})
}
