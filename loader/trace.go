package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// Target is a parsed AttachTo.
type Target struct {
	Group, Name string // tracepoint
	Symbol      string // kernel function, or user symbol
	Offset      uint64 // from Symbol (kprobe, uprobe)
	Path        string // the binary of a uprobe
	Address     uint64 // a uprobe's address in Path, instead of Symbol
}

// Bounds on AttachTo; names are far shorter in practice.
const (
	maxAttachTo = 1024
	maxSymbol   = 256
)

var (
	// Tracepoint groups and names are C identifiers (the kernel names
	// their tracefs directories after them).
	tpPartRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	// Kernel symbols, including compiler suffixes such as foo.isra.0.
	ksymRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)
	// User symbols: C names and Go's (main.main, pkg/path.(*T).Method).
	usymRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.$@/()*\[\]-]*$`)
)

// ParseAttachTo checks the target of tracing hook h:
//
//	tracepoint            GROUP/NAME            (sched/sched_process_exec)
//	kprobe                FUNCTION[+OFFSET]     (do_sys_openat2, tcp_connect+4)
//	kretprobe, fentry,    FUNCTION
//	fexit
//	uprobe, uretprobe     PATH:SYMBOL[+OFFSET] or PATH:0xADDRESS
//
// OFFSET is decimal or 0x hex. PATH is an absolute, clean host path.
func ParseAttachTo(h Hook, s string) (Target, error) {
	var t Target
	bad := func(format string, a ...any) (Target, error) {
		return t, fault.Errorf(fault.Invalid, "attachTo %.80q for type %s: "+format, append([]any{s}, a...)...)
	}
	if s == "" {
		return t, fault.Errorf(fault.Invalid, "type %s needs attachTo: %s", h, attachToForm(h))
	}
	if len(s) > maxAttachTo {
		return t, fault.Errorf(fault.Invalid, "attachTo is %d bytes long, more than the %d allowed", len(s), maxAttachTo)
	}
	switch h {
	case HookTracepoint:
		g, n, ok := strings.Cut(s, "/")
		if !ok || !tpPartRE.MatchString(g) || !tpPartRE.MatchString(n) {
			return bad("want %s", attachToForm(h))
		}
		t.Group, t.Name = g, n
	case HookKprobe, HookKretprobe, HookFentry, HookFexit:
		sym, off, hasOff := strings.Cut(s, "+")
		if len(sym) > maxSymbol || !ksymRE.MatchString(sym) {
			return bad("want %s", attachToForm(h))
		}
		t.Symbol = sym
		if hasOff {
			if h != HookKprobe {
				return bad("an offset applies to kprobe only: %s", attachToForm(h))
			}
			v, err := parseUint(off)
			if err != nil {
				return bad("offset %q is not a number (decimal or 0x hex)", off)
			}
			t.Offset = v
		}
	case HookUprobe, HookUretprobe:
		i := strings.LastIndexByte(s, ':')
		if i < 0 {
			return bad("want %s", attachToForm(h))
		}
		p, ref := s[:i], s[i+1:]
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" {
			return bad("the binary must be an absolute path without \".\", \"..\" or repeated \"/\": %s", attachToForm(h))
		}
		t.Path = p
		if strings.HasPrefix(ref, "0x") {
			v, err := parseUint(ref)
			if err != nil || v == 0 {
				return bad("address %q is not a non-zero hex number", ref)
			}
			t.Address = v
			break
		}
		sym, off, hasOff := strings.Cut(ref, "+")
		if len(sym) > maxSymbol || !usymRE.MatchString(sym) {
			return bad("%q is not a symbol name: %s", sym, attachToForm(h))
		}
		t.Symbol = sym
		if hasOff {
			v, err := parseUint(off)
			if err != nil {
				return bad("offset %q is not a number (decimal or 0x hex)", off)
			}
			t.Offset = v
		}
	default:
		return t, fault.Errorf(fault.Invalid, "attachTo applies to tracing types (%s), not %s", hookList(TracingHooks), h)
	}
	return t, nil
}

func parseUint(s string) (uint64, error) {
	if h, ok := strings.CutPrefix(s, "0x"); ok {
		return strconv.ParseUint(h, 16, 64)
	}
	return strconv.ParseUint(s, 10, 64)
}

func attachToForm(h Hook) string {
	switch h {
	case HookTracepoint:
		return "GROUP/NAME, e.g. sched/sched_process_exec"
	case HookKprobe:
		return "a kernel function, FUNCTION or FUNCTION+OFFSET, e.g. tcp_connect"
	case HookKretprobe, HookFentry, HookFexit:
		return "a kernel function, e.g. tcp_connect"
	case HookUprobe, HookUretprobe:
		return "PATH:SYMBOL, PATH:SYMBOL+OFFSET or PATH:0xADDRESS, e.g. /usr/bin/bash:readline"
	}
	return "nothing"
}

func hookList(hs []Hook) string {
	s := make([]string, len(hs))
	for i, h := range hs {
		s[i] = string(h)
	}
	return strings.Join(s, ", ")
}

// programTypeOf is the program type each hook runs.
func programTypeOf(h Hook) ebpf.ProgramType {
	switch h {
	case HookXDP:
		return ebpf.XDP
	case HookTC, HookTCX:
		return ebpf.SchedCLS
	case HookTracepoint:
		return ebpf.TracePoint
	case HookKprobe, HookKretprobe, HookUprobe, HookUretprobe:
		return ebpf.Kprobe
	case HookFentry, HookFexit:
		return ebpf.Tracing
	}
	if t, ok := cgroupProgTypes[h]; ok {
		return t
	}
	return ebpf.UnspecifiedProgram
}

// Where the kernel lists its perf event sources: kprobes and uprobes
// attach through theirs.
var eventSources = "/sys/bus/event_source/devices"

// probeTracing finds which tracing hooks this kernel cannot run and why.
// A probe that cannot tell (no privilege) reports nothing: the load itself
// then says what is wrong. A variable so tests can count the probes.
var probeTracing = func() map[Hook]string {
	missing := map[Hook]string{}
	have := func(pt ebpf.ProgramType) (string, bool) {
		err := features.HaveProgramType(pt)
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Sprintf("%s programs (BPF_PROG_TYPE_%s, CONFIG_BPF_EVENTS)", pt, strings.ToUpper(pt.String())), false
		}
		return "", true
	}
	source := func(name, config string) (string, bool) {
		if _, err := os.Stat(path.Join(eventSources, name)); errors.Is(err, fs.ErrNotExist) {
			return fmt.Sprintf("%s events (%s: %s/%s is missing)", name, config, eventSources, name), false
		}
		return "", true
	}
	if why, ok := have(ebpf.TracePoint); !ok {
		missing[HookTracepoint] = why
	}
	why, ok := have(ebpf.Kprobe)
	for _, h := range []Hook{HookKprobe, HookKretprobe} {
		if !ok {
			missing[h] = why
		} else if w, ok := source("kprobe", "CONFIG_KPROBE_EVENTS"); !ok {
			missing[h] = w
		}
	}
	for _, h := range []Hook{HookUprobe, HookUretprobe} {
		if !ok {
			missing[h] = why
		} else if w, ok := source("uprobe", "CONFIG_UPROBE_EVENTS"); !ok {
			missing[h] = w
		}
	}
	if w := probeTrampoline(); w != "" {
		missing[HookFentry] = w
		missing[HookFexit] = w
	}
	return missing
}

// probeTrampoline attaches an empty fentry program to a kernel function
// and detaches it: the only way to learn whether the kernel builds BPF
// trampolines (it needs BTF and ftrace direct calls).
func probeTrampoline() string {
	if err := features.HaveProgramType(ebpf.Tracing); errors.Is(err, ebpf.ErrNotSupported) {
		return "tracing programs (BPF_PROG_TYPE_TRACING)"
	}
	if _, err := btf.LoadKernelSpec(); err != nil {
		return fmt.Sprintf("kernel BTF (CONFIG_DEBUG_INFO_BTF: %v)", err)
	}
	var lastErr error
	// Functions every kernel with BPF has; the first one found is used.
	for _, fn := range []string{"bpf_fentry_test1", "bpf_prog_put", "security_file_open"} {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry, AttachTo: fn, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		})
		if errors.Is(err, btf.ErrNotFound) {
			lastErr = err
			continue
		}
		if err != nil {
			if errors.Is(err, os.ErrPermission) && features.HaveProgramType(ebpf.SocketFilter) != nil {
				return "" // cannot tell without privilege
			}
			// With privilege (it loads other programs), a refusal is the
			// kernel's: lockdown or an LSM forbids tracing programs.
			if errors.Is(err, unix.EPERM) {
				return "BPF trampolines (fentry/fexit: the kernel refused to load a probe fentry program with EPERM although it loads other programs: lockdown, an LSM, or no ftrace direct calls)"
			}
			return fmt.Sprintf("BPF trampolines (fentry/fexit: loading a probe program failed: %v)", err)
		}
		lnk, err := link.AttachTracing(link.TracingOptions{Program: prog})
		prog.Close()
		if err != nil {
			return fmt.Sprintf("BPF trampolines (fentry/fexit: CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS; attaching a probe program failed: %v)", err)
		}
		lnk.Close()
		return ""
	}
	return fmt.Sprintf("BPF trampolines (no probe target in the kernel's BTF: %v)", lastErr)
}

// CheckHook fails with fault.Precondition when the kernel cannot run hook h,
// naming the missing kernel feature. Only a tracing hook needs the
// probes, so only it runs them (once per loader; the kernel's features do
// not change while it runs).
func (l *Loader) CheckHook(h Hook) error {
	if !IsTracing(h) {
		return nil
	}
	if why, ok := l.missing()[h]; ok {
		return fault.Errorf(fault.Precondition, "this kernel cannot run %s programs on node %q: it lacks %s", h, l.node, why)
	}
	return nil
}

// attachTracing attaches a tracing program to its target.
func (l *Loader) attachTracing(e *entry) error {
	id := e.id
	t, err := ParseAttachTo(id.Hook, id.AttachTo)
	if err != nil {
		return err
	}
	var lnk link.Link
	switch id.Hook {
	case HookTracepoint:
		lnk, err = link.Tracepoint(t.Group, t.Name, e.prog, nil)
		if errors.Is(err, fs.ErrNotExist) {
			return fault.Errorf(fault.Invalid, "tracepoint %q does not exist on node %q (the kernel lists them under /sys/kernel/tracing/events)", id.AttachTo, l.node)
		}
	case HookKprobe, HookKretprobe:
		opts := &link.KprobeOptions{Offset: t.Offset}
		if id.Hook == HookKprobe {
			lnk, err = link.Kprobe(t.Symbol, e.prog, opts)
		} else {
			lnk, err = link.Kretprobe(t.Symbol, e.prog, opts)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return fault.Errorf(fault.Invalid, "kernel function %q does not exist on node %q or cannot be probed (see /proc/kallsyms)", t.Symbol, l.node)
		}
	case HookUprobe, HookUretprobe:
		ex, oerr := link.OpenExecutable(t.Path)
		if oerr != nil {
			if errors.Is(oerr, fs.ErrNotExist) {
				return fault.Errorf(fault.Invalid, "binary %q of attachTo %q not found on node %q", t.Path, id.AttachTo, l.node)
			}
			return fault.Errorf(fault.Invalid, "binary %q of attachTo %q cannot be probed: %v", t.Path, id.AttachTo, oerr)
		}
		opts := &link.UprobeOptions{Address: t.Address, Offset: t.Offset}
		if id.Hook == HookUprobe {
			lnk, err = ex.Uprobe(t.Symbol, e.prog, opts)
		} else {
			lnk, err = ex.Uretprobe(t.Symbol, e.prog, opts)
		}
		if errors.Is(err, link.ErrNoSymbol) {
			return fault.Errorf(fault.Invalid, "symbol %q not found in binary %q (attachTo %q)", t.Symbol, t.Path, id.AttachTo)
		}
	case HookFentry, HookFexit:
		lnk, err = link.AttachTracing(link.TracingOptions{Program: e.prog})
	default:
		return fault.Errorf(fault.Invalid, "unknown hook %q", id.Hook)
	}
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fault.Errorf(fault.Precondition, "this kernel cannot attach %s programs: %v", id.Hook, err)
		}
		return fmt.Errorf("attaching %s: %w", describeIdentity(id), err)
	}
	e.link = lnk
	return nil
}

// TracefsPath is where tracepoints need tracefs mounted.
const TracefsPath = "/sys/kernel/tracing"

// prepareTracing makes sure what attaching id needs is there: tracefs for
// tracepoints. It runs before the first tracepoint attach because the
// library looks for tracefs once per process.
func (l *Loader) prepareTracing(id Identity) error {
	if id.Hook != HookTracepoint {
		return nil
	}
	l.tracefsMu.Lock()
	defer l.tracefsMu.Unlock()
	if tracefsMounted() {
		return nil
	}
	if !l.mountTracefs {
		return fault.Errorf(fault.Precondition, "tracepoints need tracefs, and node %q has none mounted at %s: mount it (mount -t tracefs tracefs %s) or let the driver mount it (--mount-tracefs)", l.node, TracefsPath, TracefsPath)
	}
	if err := unix.Mount("tracefs", TracefsPath, "tracefs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fault.Errorf(fault.Precondition, "tracepoints need tracefs, and mounting it at %s on node %q failed: %v (mount it on the node: mount -t tracefs tracefs %s)", TracefsPath, l.node, err, TracefsPath)
	}
	klog.InfoS("Mounted tracefs for tracepoints", "path", TracefsPath)
	return nil
}

// tracefsMounted reports whether tracefs is mounted where the kernel
// offers it, or inside a mounted debugfs (older nodes).
func tracefsMounted() bool {
	for _, p := range []string{TracefsPath, "/sys/kernel/debug/tracing"} {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && st.Type == unix.TRACEFS_MAGIC {
			return true
		}
	}
	return false
}
