package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/internal/xdplink"
)

// prepare loads the identity's program and maps into the kernel without
// attaching or pinning anything, so it needs no interface lock: loads (the
// verifier's work) of different programs for one interface run in
// parallel, and only attach, which orders the programs, is serialized.
func (l *Loader) prepare(id Identity, spec *ebpf.CollectionSpec) (_ *entry, ifc *net.Interface, err error) {
	switch {
	case IsTracing(id.Hook):
		err = l.prepareTracing(id)
	case IsCgroupHook(id.Hook):
		err = checkCgroupDir(id.Cgroup)
	case id.Deferred():
		// Attached later, in the pod's namespace (AttachNetns).
	case id.Netns != "":
		err = checkNetns(id) // the interface is looked up at attach, in the namespace
	default:
		ifc, err = l.iface(id.Interface)
	}
	if err != nil {
		return nil, nil, err
	}
	// Refuse early what attach would refuse; attach checks again under
	// the interface lock.
	if err := l.checkHookFree(id); err != nil {
		return nil, nil, err
	}
	cs, err := collectionFor(id, spec)
	if err != nil {
		return nil, nil, err
	}
	coll, err := ebpf.NewCollection(cs)
	if err != nil {
		return nil, nil, classifyLoadError(id, err)
	}
	failpoint.Hit("loader.loaded")
	e := &entry{id: id, key: id.Key(), owners: map[string]struct{}{}}
	e.take(coll)
	return e, ifc, nil
}

// take moves e's program and named maps out of coll and closes the rest.
func (e *entry) take(coll *ebpf.Collection) {
	e.prog = coll.Programs[e.id.Program]
	delete(coll.Programs, e.id.Program)
	e.maps = map[string]*ebpf.Map{}
	for name, m := range coll.Maps {
		// Internal maps (.rodata, .bss) stay alive through the program;
		// coll.Close below drops our handles on them.
		if !strings.HasPrefix(name, ".") {
			e.maps[name] = m
			delete(coll.Maps, name)
		}
	}
	coll.Close()
}

// attach attaches a prepared entry and pins it. On error everything is
// undone, e included. Caller holds the interface lock.
func (l *Loader) attach(e *entry, ifc *net.Interface) (err error) {
	defer func() {
		if err != nil {
			e.destroy()
			l.removePins(e.key)
		}
	}()
	if e.id.Deferred() {
		return l.pinDeferred(e)
	}
	if err := l.checkHookFree(e.id); err != nil {
		return err
	}
	// Age orders ties on a hook: it counts from attach, in the order the
	// interface lock grants, as a restart counts it from the pins.
	e.created = time.Now()
	switch attachPath(e.id) {
	case hookInNetns:
		err = l.attachInNetns(e)
	case HookXDP:
		err = l.attachXDP(e, ifc)
	case HookTCX:
		err = l.attachTCX(e, ifc)
	case HookCgroupSKB, HookCgroupSockAddr, HookSockOps:
		err = l.attachCgroup(e)
	case HookTracepoint, HookKprobe, HookKretprobe, HookUprobe, HookUretprobe, HookFentry, HookFexit:
		err = l.attachTracing(e)
	case HookTC:
		err = fault.Errorf(fault.Precondition, "hook tc runs programs through the TC dispatcher, which needs freplace (BPF_PROG_TYPE_EXT), and this kernel rejects it; use type=tcx (Linux 6.6+)")
	default:
		err = fault.Errorf(fault.Invalid, "unknown hook %q", e.id.Hook)
	}
	if err != nil {
		return err
	}
	if e.progID, err = attachedProgramID(e); err != nil {
		return err
	}
	e.attached = true
	failpoint.Hit("loader.attached")
	if err := l.pin(e); err != nil {
		return err
	}
	failpoint.Hit("loader.pinned")
	return nil
}

// attachedProgramID returns the kernel's ID of e's program. For links that
// are bpf_links it comes from the link (one BPF_OBJ_GET_INFO_BY_FD, where
// Program.Info also reads /proc/self/fdinfo and copies the translated
// instructions out of the kernel: about half a millisecond a publish).
// Perf-event based tracing links may not report it, nor may a cgroup link
// the library made with BPF_PROG_ATTACH (kernels without cgroup bpf_links):
// those ask the program.
func attachedProgramID(e *entry) (ebpf.ProgramID, error) {
	if !IsTracing(e.id.Hook) {
		info, err := e.link.Info()
		switch {
		case err == nil && info.Program != 0:
			return info.Program, nil
		case !IsCgroupHook(e.id.Hook) && err != nil:
			return 0, fmt.Errorf("reading link info: %w", err)
		case !IsCgroupHook(e.id.Hook):
			return info.Program, nil
		}
	}
	info, err := e.prog.Info()
	if err != nil {
		return 0, fmt.Errorf("reading program info: %w", err)
	}
	id, _ := info.ID()
	return id, nil
}

// checkHookFree refuses a second XDP program on an interface while the
// kernel cannot chain programs. Caller holds the interface lock.
func (l *Loader) checkHookFree(id Identity) error {
	if id.Hook != HookXDP {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.entries {
		if e.id.Hook != HookXDP || e.id.Interface != id.Interface || scopeOf(e.id) != scopeOf(id) || e.id.Deferred() && e.key == id.Key() {
			continue
		}
		owners := make([]string, 0, len(e.owners))
		for o := range e.owners {
			owners = append(owners, o)
		}
		sort.Strings(owners)
		why := "this kernel rejects freplace (BPF_PROG_TYPE_EXT), so bpfmount cannot chain XDP programs with a dispatcher"
		return fault.Errorf(fault.Precondition, "interface %q already runs XDP program %q (priority %d, volumes %s) and %s; use type=tcx, another interface, or the identical request to share that program",
			id.Interface, e.id.Program, e.id.Priority, strings.Join(owners, ", "), why)
	}
	return nil
}

func (l *Loader) attachXDP(e *entry, ifc *net.Interface) error {
	lnk, mode, err := xdplink.Attach(e.prog, ifc.Index, e.id.XDPMode)
	if err != nil {
		return xdpAttachError(e.id, ifc, mode, err)
	}
	e.link, e.mode = lnk, mode
	return nil
}

func xdpAttachError(id Identity, ifc *net.Interface, mode string, err error) error {
	if xdplink.IsBusy(err) {
		owner := ""
		if pid := xdplink.Owner(ifc.Index); pid != 0 {
			owner = fmt.Sprintf(" (program id %d)", pid)
		}
		return fault.Errorf(fault.Precondition, "interface %q already has an XDP program%s that bpfmount does not manage; remove it (ip link set dev %s xdp off) or choose another interface",
			id.Interface, owner, id.Interface)
	}
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) && mode == XDPModeNative {
		return fault.Errorf(fault.Precondition, "interface %q does not support %s XDP: use xdpMode=skb or auto", id.Interface, mode)
	}
	return fmt.Errorf("attaching XDP program %q to %q: %w", id.Program, id.Interface, err)
}

// attachTCX places the program among bpfmount's own tcx programs on the
// same interface and direction: ascending priority, ties by program name,
// then by age. Caller holds the interface lock.
func (l *Loader) attachTCX(e *entry, ifc *net.Interface) error {
	attach := ebpf.AttachTCXIngress
	if e.id.Direction == Egress {
		attach = ebpf.AttachTCXEgress
	}
	var anchor link.Anchor
	l.mu.Lock()
	peers := l.tcxPeers(e)
	l.mu.Unlock()
	for _, p := range peers {
		if runsBefore(e, p) {
			anchor = link.BeforeProgramByID(p.progID)
			break
		}
	}
	if anchor == nil && len(peers) > 0 {
		anchor = link.AfterProgramByID(peers[len(peers)-1].progID)
	}
	lnk, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: e.prog, Attach: attach, Anchor: anchor})
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fault.Errorf(fault.Precondition, "this kernel has no tcx hook (it needs Linux 6.6 or later): use type=tc")
		}
		return fmt.Errorf("attaching tcx program %q to %q %s: %w", e.id.Program, e.id.Interface, e.id.Direction, err)
	}
	e.link = lnk
	return nil
}

// tcxPeers returns the attached tcx entries on the interface and
// direction of p, in run order; for a pod's interface, those attached in
// the namespace p is attaching in (a replaced sandbox's programs move one
// by one). Caller holds l.mu.
func (l *Loader) tcxPeers(p *entry) []*entry {
	id := p.id
	var out []*entry
	for _, e := range l.entries {
		if e.id.Hook == HookTCX && e.id.Interface == id.Interface && scopeOf(e.id) == scopeOf(id) && e.netns == p.netns && e.id.Direction == id.Direction && e.attached {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return runsBefore(out[i], out[j]) })
	return out
}

// runsBefore is the documented order of programs on one hook.
func runsBefore(a, b *entry) bool {
	if a.id.Priority != b.id.Priority {
		return a.id.Priority < b.id.Priority
	}
	if a.id.Program != b.id.Program {
		return a.id.Program < b.id.Program
	}
	return a.created.Before(b.created)
}

func (l *Loader) pin(e *entry) error {
	dir := l.pinDir(e.key)
	if err := os.MkdirAll(filepath.Join(dir, "maps"), 0o700); err != nil {
		return fmt.Errorf("creating pin directory: %w", err)
	}
	if err := e.prog.Pin(filepath.Join(dir, "program")); err != nil {
		return fmt.Errorf("pinning program: %w", err)
	}
	if e.link != nil { // dispatcher members are held by the dispatcher's pins
		if err := e.link.Pin(filepath.Join(dir, "link")); err != nil {
			return fmt.Errorf("pinning link: %w", err)
		}
	}
	for name, m := range e.maps {
		if err := m.Pin(filepath.Join(dir, "maps", name)); err != nil {
			return fmt.Errorf("pinning map %s: %w", name, err)
		}
	}
	return nil
}

// openPins re-opens a pinned attachment: its program and maps, and then
// its own link, or for a dispatcher member, its dispatcher.
func (l *Loader) openPins(id Identity, key string) (_ *entry, err error) {
	dir := l.pinDir(key)
	e := &entry{id: id, key: key, owners: map[string]struct{}{}, maps: map[string]*ebpf.Map{}, mode: id.XDPMode}
	defer func() {
		if err != nil {
			e.closeFDs()
		}
	}()
	if e.prog, err = ebpf.LoadPinnedProgram(filepath.Join(dir, "program"), nil); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fault.Errorf(fault.NotFound, "the pins of %s are gone (%s)", describeIdentity(id), dir)
		}
		return nil, fmt.Errorf("opening pinned program of %s: %w", describeIdentity(id), err)
	}
	if st, err := os.Stat(filepath.Join(dir, "program")); err == nil {
		e.created = st.ModTime()
	}
	if err := l.openMaps(e, dir); err != nil {
		return nil, err
	}
	if id.Deferred() {
		return e, l.openDeferred(e, dir)
	}
	if l.chained(id) {
		info, err := e.prog.Info()
		if err != nil {
			return nil, err
		}
		e.progID, _ = info.ID()
		return e, l.adoptChain(e)
	}
	if e.link, err = link.LoadPinnedLink(filepath.Join(dir, "link"), nil); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fault.Errorf(fault.NotFound, "the pins of %s are gone (%s)", describeIdentity(id), dir)
		}
		return nil, fmt.Errorf("opening pinned link of %s: %w", describeIdentity(id), err)
	}
	// The link's info carries the program's ID too (see load).
	info, err := e.link.Info()
	if err != nil {
		return nil, fmt.Errorf("reading the pinned link of %s: %w", describeIdentity(id), err)
	}
	e.progID = info.Program
	e.attached = linkInfoAttached(info)
	return e, nil
}

// iface looks up a host interface, as a NotFound fault naming the node.
// It asks for that one interface (SIOCGIFINDEX): net.InterfaceByName dumps
// every link of the node over netlink, a cost that grows with the pods on
// the node. Only the index and name are filled in.
func (l *Loader) iface(name string) (*net.Interface, error) {
	idx, err := ifindex(name)
	if err != nil {
		return nil, fault.Errorf(fault.NotFound, "interface %q not found on node %q", name, l.node)
	}
	return &net.Interface{Index: idx, Name: name}, nil
}

func ifindex(name string) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, err
	}
	return int(ifr.Uint32()), nil
}

func (l *Loader) openMaps(e *entry, dir string) error {
	ents, err := os.ReadDir(filepath.Join(dir, "maps"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, de := range ents {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "maps", de.Name()), nil)
		if err != nil {
			return fmt.Errorf("opening pinned map %s of %s: %w", de.Name(), describeIdentity(e.id), err)
		}
		e.maps[de.Name()] = m
	}
	return nil
}

// linkAttached reports whether a network link still has its interface.
func linkAttached(l link.Link) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	return linkInfoAttached(info)
}

func linkInfoAttached(info *link.Info) bool {
	if x := info.XDP(); x != nil {
		return x.Ifindex != 0
	}
	if t := info.TCX(); t != nil {
		return t.Ifindex != 0
	}
	if c := info.Cgroup(); c != nil {
		return c.CgroupId != 0 // zeroed when the cgroup is released
	}
	return true
}

func classifyLoadError(id Identity, err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fault.Errorf(fault.Invalid, "the kernel verifier rejected %s (%v); the end of its log:\n%s\nfix the program and rebuild the image",
			describeIdentity(id), ve.Cause, verifierTail(ve.Log))
	}
	if errors.Is(err, unix.EPERM) {
		return fault.Errorf(fault.Precondition, "the kernel refused to load %s: %v (the driver needs CAP_BPF and CAP_NET_ADMIN, and kernel lockdown must allow BPF)", describeIdentity(id), err)
	}
	if (id.Hook == HookFentry || id.Hook == HookFexit) && (errors.Is(err, btf.ErrNotFound) || errors.Is(err, ebpf.ErrNotSupported)) {
		// The kernel runs trampolines (probed before the load), so what is
		// "unsupported" is the target: the library reports a function
		// missing from the kernel's BTF so.
		return fault.Errorf(fault.Invalid, "kernel function %q not found in the kernel's BTF (fentry and fexit attach to functions the kernel describes there; see bpftool btf dump file /sys/kernel/btf/vmlinux): %v", id.AttachTo, err)
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fault.Errorf(fault.Precondition, "this kernel cannot load %s: %v", describeIdentity(id), err)
	}
	return fmt.Errorf("loading %s: %w", describeIdentity(id), err)
}

// Bounds on the verifier log quoted in an error: the log can be megabytes,
// and it quotes the object's source lines, which the image's author wrote.
const (
	verifierTailLines = 20
	verifierTailBytes = 4 << 10
	verifierLineBytes = 240
)

// verifierTail returns the last lines of a verifier log, each cut short
// and stripped of control characters, within verifierTailBytes.
func verifierTail(log []string) string {
	var lines []string
	size := 0
	for i := len(log) - 1; i >= 0 && len(lines) < verifierTailLines; i-- {
		l := strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f {
				return ' '
			}
			return r
		}, strings.TrimSpace(log[i]))
		if l == "" {
			continue
		}
		if len(l) > verifierLineBytes {
			l = strings.ToValidUTF8(l[:verifierLineBytes], "") + "…"
		}
		if size+len(l)+1 > verifierTailBytes {
			break
		}
		size += len(l) + 1
		lines = append(lines, "  "+l)
	}
	if len(lines) == 0 {
		return "  (the kernel gave no log)"
	}
	slices.Reverse(lines)
	return strings.Join(lines, "\n")
}
