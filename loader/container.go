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

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/internal/cgrouppath"
	"github.com/bpfmount/bpfmount/internal/failpoint"
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
// Scope: the probe fires for every process of the container (its main
// process, what it starts, and what is exec'd into it) and for no other.
// The kernel registers a uprobe on a file's inode, for every process on
// the node that maps it, and a PID filter would keep only one process; a
// perf event's cgroup filter does not apply to the BPF program it runs.
// So the link attaches a small filter program, made here: it runs the
// pod's program (a tail call) only when the current task is in the
// container's cgroup2 cgroup or below it (bpf_current_task_under_cgroup,
// Linux 4.9). The filter's two maps, the container's cgroup and the
// pod's program, are pinned beside the link: a program array loses its
// entries when no process or pin holds it, and the pins keep the filter
// working across daemon restarts and crashes.

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
// the binary found is the one probed, for the processes of pid's cgroup2
// cgroup (the container's) only. Attached for that process already,
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
	removeFilterPins(l.pinDir(key))
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
	dir := l.pinDir(key)
	filter, err := l.containerFilter(e, dir, pid)
	if err != nil {
		return nil, err
	}
	defer filter.Close()
	failpoint.Hit("container.filtered")
	linked := false
	defer func() {
		if !linked {
			removeFilterPins(dir)
		}
	}()
	// The process's cgroup is the container's only if the process is
	// still the one asked for.
	if now, err := procStart(pid); err != nil || now != start {
		return nil, fault.Errorf(fault.Precondition, "the container's process %d exited while its cgroup was opened", pid)
	}
	opts := &link.UprobeOptions{Address: t.Address, Offset: t.Offset}
	var lnk link.Link
	if e.id.Hook == HookUprobe {
		lnk, err = ex.Uprobe(t.Symbol, filter, opts)
	} else {
		lnk, err = ex.Uretprobe(t.Symbol, filter, opts)
	}
	if errors.Is(err, link.ErrNoSymbol) {
		return nil, fault.Errorf(fault.NotFound, "symbol %q not found in binary %q of container %s", t.Symbol, t.Path, e.id.Container)
	}
	if err != nil {
		return nil, fmt.Errorf("attaching %s: %w", describeIdentity(e.id), err)
	}
	if err := lnk.Pin(filepath.Join(dir, "link")); err != nil {
		lnk.Close()
		return nil, fmt.Errorf("pinning link: %w", err)
	}
	linked = true
	failpoint.Hit("container.linked")
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

// Pins, in a container uprobe's pin directory, of its filter's maps.
const (
	filterProgsPin  = "filter-program"
	filterCgroupPin = "filter-cgroup"
)

// removeFilterPins removes the pins of a container uprobe's filter: its
// link is gone or about to be replaced.
func removeFilterPins(dir string) {
	_ = os.Remove(filepath.Join(dir, filterProgsPin))
	_ = os.Remove(filepath.Join(dir, filterCgroupPin))
}

// containerFilter loads the filter program of e for the container whose
// main process is pid, and pins its maps in dir (see the Scope above).
func (l *Loader) containerFilter(e *entry, dir string, pid int) (*ebpf.Program, error) {
	root := l.cgroupRoot
	if root == "" {
		root = cgrouppath.DefaultRoot
	}
	mount, err := cgrouppath.Unified(root)
	if err != nil {
		return nil, err
	}
	rel, err := cgrouppath.OfProcess(pid)
	if err != nil {
		return nil, fault.Wrap(fault.Precondition, fmt.Errorf("finding the cgroup of container %s: %w", e.id.Container, err))
	}
	cg, err := openBeneath(mount, rel)
	if err != nil {
		return nil, fault.Wrap(fault.Precondition, fmt.Errorf("opening the cgroup %s of container %s: %w", clipPath(rel), e.id.Container, err))
	}
	defer unix.Close(cg)

	cgroups, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.CGroupArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("creating the cgroup map of container %s's filter: %w", e.id.Container, err)
	}
	defer cgroups.Close()
	if err := cgroups.Put(uint32(0), uint32(cg)); err != nil {
		return nil, fmt.Errorf("setting the cgroup of container %s's filter: %w", e.id.Container, err)
	}
	progs, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("creating the program map of container %s's filter: %w", e.id.Container, err)
	}
	defer progs.Close()
	filter, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "bpfmount_ctr",
		Type:    e.prog.Type(),
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1), // the probe's registers
			asm.LoadMapPtr(asm.R1, cgroups.FD()),
			asm.Mov.Imm(asm.R2, 0),
			asm.FnCurrentTaskUnderCgroup.Call(),
			asm.JNE.Imm(asm.R0, 1, "out"), // another cgroup's, or an error
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.LoadMapPtr(asm.R2, progs.FD()),
			asm.Mov.Imm(asm.R3, 0),
			asm.FnTailCall.Call(),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
			asm.Return(),
		},
	})
	if err != nil {
		return nil, fault.Wrap(fault.Precondition, fmt.Errorf("loading the filter that keeps container %s's uprobe to the container's cgroup (the kernel needs bpf_current_task_under_cgroup and program arrays): %w", e.id.Container, err))
	}
	// The pod's program goes in once the filter owns the array: the
	// kernel checks then that the two can tail call.
	if err := progs.Put(uint32(0), e.prog); err != nil {
		filter.Close()
		return nil, fault.Wrap(fault.Invalid, fmt.Errorf("program %s cannot run from the container filter (a %s program of another kind?): %w", e.id.Program, e.id.Hook, err))
	}
	removeFilterPins(dir)
	if err := progs.Pin(filepath.Join(dir, filterProgsPin)); err != nil {
		filter.Close()
		return nil, fmt.Errorf("pinning the program map of container %s's filter: %w", e.id.Container, err)
	}
	if err := cgroups.Pin(filepath.Join(dir, filterCgroupPin)); err != nil {
		filter.Close()
		return nil, fmt.Errorf("pinning the cgroup map of container %s's filter: %w", e.id.Container, err)
	}
	return filter, nil
}

// openBeneath opens the directory rel under mount, never outside it.
func openBeneath(mount, rel string) (int, error) {
	m, err := unix.Open(mount, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(m)
	rel = strings.TrimPrefix(rel, "/")
	if rel == "" {
		rel = "."
	}
	return unix.Openat2(m, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV,
	})
}

// clipPath bounds a path from /proc for a message.
func clipPath(p string) string {
	if len(p) > 128 {
		return p[:128] + "..."
	}
	return p
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
