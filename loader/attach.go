package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/fault"
)

// load loads the identity's program, attaches it and pins it. On error
// everything it did is undone.
func (l *Loader) load(id Identity, spec *ebpf.CollectionSpec) (_ *entry, err error) {
	var ifc *net.Interface
	if IsTracing(id.Hook) {
		if err := l.prepareTracing(id); err != nil {
			return nil, err
		}
	} else if ifc, err = l.iface(id.Interface); err != nil {
		return nil, err
	}
	if err := l.checkHookFree(id); err != nil {
		return nil, err
	}
	cs, err := collectionFor(id, spec)
	if err != nil {
		return nil, err
	}
	coll, err := ebpf.NewCollection(cs)
	if err != nil {
		return nil, classifyLoadError(id, err)
	}
	failpoint.Hit("loader.loaded")
	e := &entry{id: id, key: id.Key(), created: time.Now(), owners: map[string]struct{}{}, maps: map[string]*ebpf.Map{}}
	e.prog = coll.Programs[id.Program]
	delete(coll.Programs, id.Program)
	for name, m := range coll.Maps {
		// Internal maps (.rodata, .bss) stay alive through the program;
		// coll.Close below drops our handles on them.
		if !strings.HasPrefix(name, ".") {
			e.maps[name] = m
			delete(coll.Maps, name)
		}
	}
	coll.Close()
	defer func() {
		if err != nil {
			e.destroy()
			l.removePins(e.key)
		}
	}()
	info, err := e.prog.Info()
	if err != nil {
		return nil, fmt.Errorf("reading program info: %w", err)
	}
	e.progID, _ = info.ID()

	switch id.Hook {
	case HookXDP:
		err = l.attachXDP(e, ifc)
	case HookTCX:
		err = l.attachTCX(e, ifc)
	case HookTracepoint, HookKprobe, HookKretprobe, HookUprobe, HookUretprobe, HookFentry, HookFexit:
		err = l.attachTracing(e)
	case HookTC:
		err = fault.Errorf(fault.Precondition, "hook tc runs programs through the TC dispatcher, which needs freplace (BPF_PROG_TYPE_EXT), and this kernel rejects it; use type=tcx (Linux 6.6+)")
	default:
		err = fault.Errorf(fault.Invalid, "unknown hook %q", id.Hook)
	}
	if err != nil {
		return nil, err
	}
	e.attached = true
	failpoint.Hit("loader.attached")
	if err := l.pin(e); err != nil {
		return nil, err
	}
	failpoint.Hit("loader.pinned")
	return e, nil
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
		if e.id.Hook != HookXDP || e.id.Interface != id.Interface {
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
	try := func(flags link.XDPAttachFlags) (link.Link, error) {
		return link.AttachXDP(link.XDPOptions{Program: e.prog, Interface: ifc.Index, Flags: flags})
	}
	var lnk link.Link
	var err error
	switch e.id.XDPMode {
	case XDPModeNative:
		lnk, err = try(link.XDPDriverMode)
		e.mode = XDPModeNative
	case XDPModeSKB:
		lnk, err = try(link.XDPGenericMode)
		e.mode = XDPModeSKB
	default:
		lnk, err = try(link.XDPDriverMode)
		e.mode = XDPModeNative
		if err != nil && !isBusy(err) {
			lnk, err = try(link.XDPGenericMode)
			e.mode = XDPModeSKB
		}
	}
	if err != nil {
		return xdpAttachError(e.id, ifc, err)
	}
	e.link = lnk
	return nil
}

func xdpAttachError(id Identity, ifc *net.Interface, err error) error {
	if isBusy(err) {
		owner := ""
		if nl, nlErr := netlink.LinkByIndex(ifc.Index); nlErr == nil && nl.Attrs().Xdp != nil && nl.Attrs().Xdp.ProgId != 0 {
			owner = fmt.Sprintf(" (program id %d)", nl.Attrs().Xdp.ProgId)
		}
		return fault.Errorf(fault.Precondition, "interface %q already has an XDP program%s that bpfmount does not manage; remove it (ip link set dev %s xdp off) or choose another interface",
			id.Interface, owner, id.Interface)
	}
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) && id.XDPMode == XDPModeNative {
		return fault.Errorf(fault.Precondition, "interface %q does not support %s XDP: use xdpMode=skb or auto", id.Interface, id.XDPMode)
	}
	return fmt.Errorf("attaching XDP program %q to %q: %w", id.Program, id.Interface, err)
}

func isBusy(err error) bool {
	return errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST)
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
	peers := l.tcxPeers(e.id)
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

// tcxPeers returns the attached tcx entries on id's interface and
// direction, in run order. Caller holds l.mu.
func (l *Loader) tcxPeers(id Identity) []*entry {
	var out []*entry
	for _, e := range l.entries {
		if e.id.Hook == HookTCX && e.id.Interface == id.Interface && e.id.Direction == id.Direction && e.attached {
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
	info, err := e.prog.Info()
	if err != nil {
		return nil, err
	}
	e.progID, _ = info.ID()
	if err := l.openMaps(e, dir); err != nil {
		return nil, err
	}
	if l.chained(id.Hook) {
		return e, l.adoptChain(e)
	}
	if e.link, err = link.LoadPinnedLink(filepath.Join(dir, "link"), nil); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fault.Errorf(fault.NotFound, "the pins of %s are gone (%s)", describeIdentity(id), dir)
		}
		return nil, fmt.Errorf("opening pinned link of %s: %w", describeIdentity(id), err)
	}
	e.attached = linkAttached(e.link)
	return e, nil
}

// iface looks up a host interface, as a NotFound fault naming the node.
func (l *Loader) iface(name string) (*net.Interface, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fault.Errorf(fault.NotFound, "interface %q not found on node %q", name, l.node)
	}
	return ifc, nil
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
	if x := info.XDP(); x != nil {
		return x.Ifindex != 0
	}
	if t := info.TCX(); t != nil {
		return t.Ifindex != 0
	}
	return true
}

func classifyLoadError(id Identity, err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		lines := ve.Log
		if len(lines) > 8 {
			lines = lines[len(lines)-8:]
		}
		return fault.Errorf(fault.Invalid, "the kernel verifier rejected %s: %s", describeIdentity(id), strings.Join(lines, " | "))
	}
	if errors.Is(err, unix.EPERM) {
		return fault.Errorf(fault.Precondition, "the kernel refused to load %s: %v (the driver needs CAP_BPF and CAP_NET_ADMIN, and kernel lockdown must allow BPF)", describeIdentity(id), err)
	}
	if (id.Hook == HookFentry || id.Hook == HookFexit) && (errors.Is(err, btf.ErrNotFound) || errors.Is(err, ebpf.ErrNotSupported)) {
		// The kernel runs trampolines (probed at start), so what is
		// "unsupported" is the target: the library reports a function
		// missing from the kernel's BTF so.
		return fault.Errorf(fault.Invalid, "kernel function %q not found in the kernel's BTF (fentry and fexit attach to functions the kernel describes there; see bpftool btf dump file /sys/kernel/btf/vmlinux): %v", id.AttachTo, err)
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fault.Errorf(fault.Precondition, "this kernel cannot load %s: %v", describeIdentity(id), err)
	}
	return fmt.Errorf("loading %s: %w", describeIdentity(id), err)
}
