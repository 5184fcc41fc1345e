package loader

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// A container's uprobe (Identity.Container, with Identity.Pod) is a
// deferred attachment like a pod's own interface: loaded and pinned at
// publish, attached by AttachContainer once its owner has found the
// container's main process through the container runtime, and attached
// again when the container restarts (a new process, maybe a new root
// filesystem). Its identity names the pod and the container, never a PID
// or a root path.
//
// Scope: the probe fires for the container's main process (all its
// threads) only. The kernel registers a uprobe on a file's inode, for
// every process on the node that maps it; the PID filter keeps the
// program to the container's process, never another pod's or the node's.

// containerNameRE is a Kubernetes container name: an RFC 1123 label.
var containerNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ValidContainerName reports whether s is a Kubernetes container name.
func ValidContainerName(s string) bool { return containerNameRE.MatchString(s) }

// checkContainer refuses a container attachment that cannot be.
func checkContainer(id Identity) error {
	if !ValidContainerName(id.Container) {
		return fault.Errorf(fault.Invalid, "container %.64q is not a container name (a DNS label: lower-case letters, digits and '-', at most 63)", id.Container)
	}
	if id.Pod == "" {
		return fault.Errorf(fault.Invalid, "container %s names a container of a pod, and the request names no pod", id.Container)
	}
	if id.Hook != HookUprobe && id.Hook != HookUretprobe {
		return fault.Errorf(fault.Invalid, "container applies to uprobe and uretprobe, not %s", id.Hook)
	}
	if id.Netns != "" || id.Interface != "" || id.Cgroup != "" {
		return fault.Errorf(fault.Invalid, "a container's uprobe attaches to a binary in the container: it takes no interface, namespace or cgroup")
	}
	return nil
}

// AttachContainer attaches the container uprobe with the given key for
// the process pid (the container's main process): its attachTo path is
// resolved inside the process's root filesystem, never outside it, and
// the binary found is the one probed. Attached for that process already,
// it does nothing; attached for another (the container restarted), that
// link goes first.
func (l *Loader) AttachContainer(key string, pid int) (*Program, error) {
	e, unlock, err := l.lockedDeferred(key)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if e.id.Container == "" {
		return nil, fault.Errorf(fault.Invalid, "%s is not a container's uprobe", describeIdentity(e.id))
	}
	if pid <= 0 {
		return nil, fault.Errorf(fault.Invalid, "process %d is not a process", pid)
	}
	start, err := procStart(pid)
	if err != nil {
		return nil, err
	}
	where := "pid:" + strconv.Itoa(pid)
	if e.link != nil && e.netns == where && e.netnsIno == start {
		return l.snapshotOf(e), nil
	}
	if err := l.dropLink(e); err != nil {
		return nil, err
	}
	t, err := ParseAttachTo(e.id.Hook, e.id.AttachTo)
	if err != nil {
		return nil, err
	}
	f, err := openInRoot(pid, t.Path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// The root was the process's own only if the process is still the
	// one asked for (a PID can be reused once it exits).
	if now, err := procStart(pid); err != nil || now != start {
		return nil, fault.Errorf(fault.Precondition, "the container's process %d exited while its binary was opened", pid)
	}
	// The uprobe is made on the opened file through its descriptor, so
	// no rename or symbolic link in the container can change which file
	// it is.
	ex, err := link.OpenExecutable(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "binary %q in container %s cannot be probed: %v", t.Path, e.id.Container, err)
	}
	opts := &link.UprobeOptions{Address: t.Address, Offset: t.Offset, PID: pid}
	var lnk link.Link
	if e.id.Hook == HookUprobe {
		lnk, err = ex.Uprobe(t.Symbol, e.prog, opts)
	} else {
		lnk, err = ex.Uretprobe(t.Symbol, e.prog, opts)
	}
	if errors.Is(err, link.ErrNoSymbol) {
		return nil, fault.Errorf(fault.NotFound, "symbol %q not found in binary %q of container %s", t.Symbol, t.Path, e.id.Container)
	}
	if err != nil {
		return nil, fmt.Errorf("attaching %s: %w", describeIdentity(e.id), err)
	}
	dir := l.pinDir(key)
	if err := lnk.Pin(filepath.Join(dir, "link")); err != nil {
		lnk.Close()
		return nil, fmt.Errorf("pinning link: %w", err)
	}
	_ = os.Remove(filepath.Join(dir, netnsPin))
	if err := os.Symlink(strconv.FormatUint(start, 10)+":"+where, filepath.Join(dir, netnsPin)); err != nil {
		klog.ErrorS(err, "Recording the process of a container's uprobe; a restart attaches it again", "key", key)
	}
	l.mu.Lock()
	e.link, e.netns, e.netnsIno, e.attached = lnk, where, start, true
	l.mu.Unlock()
	klog.V(2).InfoS("Attached uprobe in a pod's container", "key", key, "program", e.id.Program, "hook", e.id.Hook,
		"pod", e.id.Pod, "container", e.id.Container, "pid", pid)
	return l.snapshotOf(e), nil
}

// openInRoot opens path inside the root filesystem of process pid: every
// component, symbolic links included, is resolved as if that root were
// "/", so nothing in the container can lead outside it.
func openInRoot(pid int, path string) (*os.File, error) {
	rootPath := "/proc/" + strconv.Itoa(pid) + "/root"
	root, err := unix.Open(rootPath, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fault.Errorf(fault.Precondition, "the container's process %d is gone", pid)
		}
		return nil, fmt.Errorf("opening the root of process %d: %w", pid, err)
	}
	defer unix.Close(root)
	fd, err := unix.Openat2(root, strings.TrimPrefix(path, "/"), &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fault.Errorf(fault.NotFound, "binary %q not found in the container", path)
		}
		return nil, fault.Errorf(fault.Invalid, "binary %q in the container cannot be opened: %v", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("inspecting binary %q in the container: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return nil, fault.Errorf(fault.Invalid, "%q in the container is not a regular file", path)
	}
	return f, nil
}

// procStart is the start time of process pid (in clock ticks since boot):
// with the PID, it names one process, where a PID alone can be reused.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, fault.Errorf(fault.Precondition, "the container's process %d is gone", pid)
		}
		return 0, fmt.Errorf("reading process %d: %w", pid, err)
	}
	// The command name, in parentheses, may hold spaces and ')': the
	// fields follow the last ')'. starttime is field 22; after the name,
	// field 3 (state) comes first.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("process %d: unexpected /proc stat", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return 0, fmt.Errorf("process %d: unexpected /proc stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}
