package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/fault"
)

// A deferred attachment is loaded and pinned now and attached later, when
// its runtime target appears: a pod's own interface (Identity.Pod set)
// attaches inside the pod's network namespace once the pod's sandbox has
// one, and again inside a new one when the sandbox is replaced. Its
// identity names the pod, never the namespace's path (runtime state that
// changes with the sandbox), so its program and maps outlive sandboxes.
//
// The owner finds the namespace (through the container runtime) and calls
// AttachNetns and DetachNetns; the loader keeps the link pinned, and the
// namespace it is in beside it (a symbolic link in the pin directory,
// which bpffs allows), so that a restarted daemon knows where it stands.
// Where the kernel chains, xdp and tc on a pod's interface are dispatcher
// members instead, with no link of their own (see podChained in chain.go).

// StatusMap is the map every deferred attachment carries, for its owner to
// publish where the attachment stands: a one-entry array (key 0) whose
// value is StatusSize bytes of JSON, NUL-padded.
const (
	StatusMap  = "bpfmount_status"
	StatusSize = 512
)

// netnsPin is the symbolic link, in a deferred attachment's pin
// directory, whose target says which namespace its link is in.
const netnsPin = "netns"

// Deferred reports whether id attaches after load (AttachNetns).
func (id Identity) Deferred() bool { return id.Pod != "" }

// checkDeferred refuses what cannot attach inside a pod's namespace.
func checkDeferred(id Identity) error {
	if id.Container != "" {
		return checkContainer(id)
	}
	if !id.Deferred() {
		return nil
	}
	if id.Netns != "" {
		return fault.Errorf(fault.Invalid, "a pod's own interface is found in the pod's network namespace at attach: name the pod or the namespace, not both")
	}
	if id.Hook != HookXDP && id.Hook != HookTCX && id.Hook != HookTC {
		return fault.Errorf(fault.Invalid, "type %s cannot attach to a pod's own interface: use xdp, tc or tcx", id.Hook)
	}
	return nil
}

// scopeOf names the network namespace an interface of id is in: the
// daemon's (""), a path, or a pod's (whatever its sandbox is now).
func scopeOf(id Identity) string {
	if id.Pod != "" {
		return "pod:" + id.Pod
	}
	return id.Netns
}

// pinDeferred pins a loaded deferred entry with its status map and no
// link. Caller holds the target lock.
func (l *Loader) pinDeferred(e *entry) error {
	if e.id.Hook == HookTC && !l.canChain {
		return tcNeedsFreplace()
	}
	if _, taken := e.maps[StatusMap]; taken {
		return fault.Errorf(fault.Invalid, "the object has a map named %s, a name bpfmount keeps for the status of a pod's attachment: rename it", StatusMap)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bpfm_status", Type: ebpf.Array, KeySize: 4, ValueSize: StatusSize, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("creating the status map: %w", err)
	}
	e.maps[StatusMap] = m
	if err := e.readProgID(); err != nil {
		return err
	}
	return l.pin(e)
}

// readProgID records the kernel's ID of e's program.
func (e *entry) readProgID() error {
	info, err := e.prog.Info()
	if err != nil {
		return fmt.Errorf("reading program info: %w", err)
	}
	e.progID, _ = info.ID()
	return nil
}

// openDeferred re-opens the link of a deferred entry after a restart, if
// it had one, and the namespace it is in.
func (l *Loader) openDeferred(e *entry, dir string) error {
	if l.podChained(e.id) {
		return l.openPodMember(e, dir)
	}
	lnk, err := link.LoadPinnedLink(filepath.Join(dir, "link"), nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // loaded, not attached
	}
	if err != nil {
		return fmt.Errorf("opening pinned link of %s: %w", describeIdentity(e.id), err)
	}
	e.link = lnk
	e.netns, e.netnsIno = readNetnsPin(dir)
	e.attached = linkAttached(lnk)
	return nil
}

// readNetnsPin reads which namespace the attachment pinned in dir is in
// ("" when none is recorded).
func readNetnsPin(dir string) (string, uint64) {
	target, err := os.Readlink(filepath.Join(dir, netnsPin))
	if err != nil {
		return "", 0
	}
	return parseNetnsPin(target)
}

// writeNetnsPin records the namespace an attachment is in.
func writeNetnsPin(dir, netns string, ino uint64) error {
	_ = os.Remove(filepath.Join(dir, netnsPin))
	return os.Symlink(strconv.FormatUint(ino, 10)+":"+netns, filepath.Join(dir, netnsPin))
}

// AttachNetns attaches the deferred attachment with the given key to its
// interface inside the network namespace at netns (a path to open). When
// it is attached there already it does nothing; when it is attached in
// another namespace (the pod's previous sandbox), that link goes first.
func (l *Loader) AttachNetns(key, netns string) (*Program, error) {
	e, unlock, err := l.lockedDeferred(key)
	if err != nil {
		return nil, err
	}
	defer unlock()
	ino, err := netnsInode(netns)
	if err != nil {
		return nil, err
	}
	if l.podChained(e.id) {
		return l.attachPodMember(e, netns, ino)
	}
	if e.link != nil && e.netns == netns && e.netnsIno == ino && linkAttached(e.link) {
		return l.snapshotOf(e), nil
	}
	if err := l.dropLink(e); err != nil {
		return nil, err
	}
	l.mu.Lock()
	e.netns, e.netnsIno = netns, ino // where its tcx peers are (tcxPeers)
	l.mu.Unlock()
	err = inNetns(netns, func() error {
		idx, err := ifindex(e.id.Interface)
		if err != nil {
			return fault.Errorf(fault.NotFound, "interface %q not found in the pod's network namespace %s", e.id.Interface, netns)
		}
		if err := l.checkHookFree(e.id); err != nil {
			return err
		}
		ifc := &net.Interface{Index: idx, Name: e.id.Interface}
		if e.id.Hook == HookXDP {
			return l.attachXDP(e, ifc)
		}
		return l.attachTCX(e, ifc)
	})
	if err == nil {
		failpoint.Hit("podnet.attached")
		err = e.link.Pin(filepath.Join(l.pinDir(key), "link"))
		if err != nil {
			e.link.Close()
			err = fmt.Errorf("pinning link: %w", err)
		}
	}
	if err != nil {
		l.mu.Lock()
		e.link, e.netns, e.netnsIno = nil, "", 0
		l.mu.Unlock()
		return nil, err
	}
	failpoint.Hit("podnet.linked")
	if err := writeNetnsPin(l.pinDir(key), netns, ino); err != nil {
		klog.ErrorS(err, "Recording the namespace of a pod's attachment; a restart attaches it again", "key", key)
	}
	l.mu.Lock()
	e.netns, e.netnsIno, e.attached = netns, ino, true
	l.mu.Unlock()
	klog.V(2).InfoS("Attached program in a pod's network namespace", "key", key, "program", e.id.Program, "hook", e.id.Hook,
		"interface", e.id.Interface, "pod", e.id.Pod, "netns", netns)
	return l.snapshotOf(e), nil
}

// DetachNetns drops the link of a deferred attachment (its namespace went
// with the pod's sandbox); program, maps and owners stay.
func (l *Loader) DetachNetns(key string) error {
	e, unlock, err := l.lockedDeferred(key)
	if err != nil {
		return err
	}
	defer unlock()
	if l.podChained(e.id) {
		return l.leavePodChain(e)
	}
	return l.dropLink(e)
}

// lockedDeferred takes the collector's read lock, finds a deferred entry
// and takes its target lock; unlock releases both.
func (l *Loader) lockedDeferred(key string) (_ *entry, unlock func(), err error) {
	l.gc.RLock()
	defer func() {
		if err != nil {
			l.gc.RUnlock()
		}
	}()
	l.mu.Lock()
	e := l.entries[key]
	l.mu.Unlock()
	if e == nil {
		return nil, nil, fault.Errorf(fault.NotFound, "no program with key %s is loaded", key)
	}
	if !e.id.Deferred() {
		return nil, nil, fault.Errorf(fault.Invalid, "%s is not attached later", describeIdentity(e.id))
	}
	unlockTarget := l.lockTarget(e.id)
	l.mu.Lock()
	same := l.entries[key] == e
	l.mu.Unlock()
	if !same {
		unlockTarget()
		return nil, nil, fault.Errorf(fault.NotFound, "the program with key %s was released", key)
	}
	return e, func() {
		unlockTarget()
		l.gc.RUnlock()
	}, nil
}

// dropLink detaches and unpins e's link, if any. Caller holds the target
// lock.
func (l *Loader) dropLink(e *entry) error {
	if e.link == nil {
		return nil
	}
	dir := l.pinDir(e.key)
	if err := e.link.Unpin(); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unpinning the link of %s: %w", describeIdentity(e.id), err)
	}
	e.link.Close()
	_ = os.Remove(filepath.Join(dir, netnsPin))
	removeFilterPins(dir)
	l.mu.Lock()
	e.link, e.netns, e.netnsIno, e.attached = nil, "", 0, false
	l.mu.Unlock()
	return nil
}

// snapshotOf is e's snapshot, taken under l.mu.
func (l *Loader) snapshotOf(e *entry) *Program {
	l.mu.Lock()
	defer l.mu.Unlock()
	return e.snapshot(false)
}

// netnsInode identifies the namespace at path: a path can be reused for
// another namespace (a recycled pid), an inode on nsfs cannot while the
// namespace lives.
func netnsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, fault.Errorf(fault.Precondition, "network namespace %s does not exist (the pod's sandbox may be gone): %w", path, fs.ErrNotExist)
		}
		return 0, fmt.Errorf("inspecting network namespace %s: %w", path, err)
	}
	var sf unix.Statfs_t
	if err := unix.Statfs(path, &sf); err != nil {
		return 0, fmt.Errorf("inspecting network namespace %s: %w", path, err)
	}
	if sf.Type != unix.NSFS_MAGIC && sf.Type != unix.PROC_SUPER_MAGIC {
		return 0, fault.Errorf(fault.Invalid, "%s is not a network namespace", path)
	}
	return st.Ino, nil
}

func parseNetnsPin(target string) (string, uint64) {
	n, path, ok := strings.Cut(target, ":")
	if !ok {
		return "", 0
	}
	ino, err := strconv.ParseUint(n, 10, 64)
	if err != nil {
		return "", 0
	}
	return path, ino
}
