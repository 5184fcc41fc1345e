package dispatcher

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Extension is a program loaded by LoadMember: a BPF_PROG_TYPE_EXT program
// that can fill any slot of any dispatcher of its hook, and its object's
// maps.
type Extension struct {
	Program *ebpf.Program
	// Maps are the object's maps by name, internal ones (.rodata, .data,
	// .bss) left out: those stay alive through the program.
	Maps map[string]*ebpf.Map
	// Frags reports whether the program was loaded with
	// BPF_F_XDP_HAS_FRAGS (its ELF section is "xdp.frags").
	Frags bool
}

// Close closes the program's and the maps' descriptors.
func (e *Extension) Close() error {
	var errs []error
	if e.Program != nil {
		errs = append(errs, e.Program.Close())
	}
	for _, m := range e.Maps {
		errs = append(errs, m.Close())
	}
	return errors.Join(errs...)
}

// LoadMember loads program from spec as a member of h's dispatchers: the
// program, which must be of the hook's type (XDP, or SchedCLS for tc), is
// loaded as an extension of slot prog0 of a dispatcher template the package
// keeps, and can then be attached to any slot of any dispatcher of the same
// hook. The other programs of spec are not loaded; its maps are (opts works
// as for ebpf.NewCollectionWithOptions, MapReplacements included).
//
// Verifier errors are returned wrapped, so errors.As finds the
// *ebpf.VerifierError.
func LoadMember(h Hook, spec *ebpf.CollectionSpec, program string, opts *ebpf.CollectionOptions) (*Extension, error) {
	ps, ok := spec.Programs[program]
	if !ok {
		return nil, fmt.Errorf("dispatcher: program %q is not in the object", program)
	}
	want := ebpf.XDP
	if h == TC {
		want = ebpf.SchedCLS
	}
	if ps.Type != want {
		return nil, fmt.Errorf("dispatcher: program %q is a %s program; a %s dispatcher runs %s programs", program, ps.Type, h, want)
	}
	frags := h == XDP && ps.Flags&unix.BPF_F_XDP_HAS_FRAGS != 0
	tmpl, err := template(h, frags)
	if err != nil {
		return nil, err
	}
	cs := spec.Copy()
	for name := range cs.Programs {
		if name != program {
			delete(cs.Programs, name)
		}
	}
	ps = cs.Programs[program]
	ps.Type = ebpf.Extension
	ps.AttachType = ebpf.AttachNone
	ps.AttachTarget = tmpl
	ps.AttachTo = "prog0"
	var o ebpf.CollectionOptions
	if opts != nil {
		o = *opts
	}
	coll, err := ebpf.NewCollectionWithOptions(cs, o)
	if err != nil {
		return nil, fmt.Errorf("loading %q as a %s dispatcher member: %w", program, h, err)
	}
	ext := &Extension{Program: coll.Programs[program], Maps: map[string]*ebpf.Map{}, Frags: frags}
	delete(coll.Programs, program)
	for name, m := range coll.Maps {
		if !strings.HasPrefix(name, ".") {
			ext.Maps[name] = m
			delete(coll.Maps, name)
		}
	}
	coll.Close()
	return ext, nil
}

// Templates: one loaded dispatcher per hook and frags flag, kept for the
// life of the process, that members are loaded against. Any dispatcher of
// the hook works as the load-time target: a member is re-attached to the
// slot of the revision that runs it.
var templates struct {
	mu    sync.Mutex
	progs map[templateKey]*ebpf.Program
}

type templateKey struct {
	h     Hook
	frags bool
}

func template(h Hook, frags bool) (*ebpf.Program, error) {
	templates.mu.Lock()
	defer templates.mu.Unlock()
	k := templateKey{h, frags}
	if p := templates.progs[k]; p != nil {
		return p, nil
	}
	members := make([]Member, Slots)
	for i := range members {
		members[i].Frags = frags
	}
	p, err := loadDispatcher(h, members)
	if err != nil {
		return nil, err
	}
	if templates.progs == nil {
		templates.progs = map[templateKey]*ebpf.Program{}
	}
	templates.progs[k] = p
	return p, nil
}

var support struct {
	once sync.Once
	err  error
}

// Supported returns nil when the kernel can run dispatchers: it loads
// BPF_PROG_TYPE_EXT programs and attaches them to a dispatcher's slot (the
// probe does both, and runs the result once). Otherwise the error wraps
// ErrUnsupported and says why. The answer is computed once per process.
func Supported() error {
	support.once.Do(func() { support.err = probe() })
	return support.err
}

func probe() error {
	if err := features.HaveProgramType(ebpf.Extension); err != nil {
		return fmt.Errorf("%w: it rejects freplace (BPF_PROG_TYPE_EXT) programs: %w", ErrUnsupported, err)
	}
	if err := loadSpecs(); err != nil {
		return err
	}
	ext, err := LoadMember(XDP, specs.probes, ProbeProgProbeXdp, nil)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	defer ext.Close()
	disp, err := loadDispatcher(XDP, []Member{{ProceedOn: 1 << xdpPass}})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	defer disp.Close()
	l, err := link.AttachFreplace(disp, "prog0", ext.Program)
	if err != nil {
		return fmt.Errorf("%w: attaching an extension to a dispatcher slot: %w", ErrUnsupported, err)
	}
	defer l.Close()
	ret, err := disp.Run(&ebpf.RunOptions{Data: make([]byte, 64)})
	if err != nil {
		// Running is not needed to dispatch; some kernels refuse test runs.
		return nil
	}
	if ret != xdpPass {
		return fmt.Errorf("%w: a probe chain returned %d instead of XDP_PASS", ErrUnsupported, ret)
	}
	return nil
}

// Verdicts the package itself needs.
const (
	xdpPass = 2 // XDP_PASS
	tcOK    = 0 // TC_ACT_OK
)
