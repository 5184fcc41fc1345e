package loader

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// spec returns the parsed object of an image, parsing it once per digest:
// parsing costs about as much as loading, so it is cached.
func (l *Loader) spec(img *bytecode.Image) (*ebpf.CollectionSpec, error) {
	l.mu.Lock()
	s := l.specs.get(img.Digest)
	l.mu.Unlock()
	if s != nil {
		return s, nil
	}
	s, err := parseSpec(img.Object)
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: cannot read its ELF object: %v", img.Reference, err)
	}
	l.mu.Lock()
	l.specs.put(img.Digest, s, len(img.Object))
	l.mu.Unlock()
	return s, nil
}

// parseSpec parses an object; a panic on hostile input is an error, not
// the end of the daemon.
func parseSpec(obj []byte) (s *ebpf.CollectionSpec, err error) {
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("malformed object (%v)", r)
		}
	}()
	return ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
}

// specCacheBytes bounds the parsed objects kept, counted by the size of
// the objects they came from: a node that saw many large images must not
// keep them all.
const specCacheBytes = 64 << 20

// specCache keeps parsed objects, oldest evicted first past its bound.
// The Loader's mu guards it.
type specCache struct {
	max, total int
	specs      map[string]*ebpf.CollectionSpec
	sizes      map[string]int
	order      []string // insertion order
}

func newSpecCache(max int) specCache {
	return specCache{max: max, specs: map[string]*ebpf.CollectionSpec{}, sizes: map[string]int{}}
}

func (c *specCache) get(digest string) *ebpf.CollectionSpec { return c.specs[digest] }

func (c *specCache) put(digest string, s *ebpf.CollectionSpec, size int) {
	if _, ok := c.specs[digest]; ok || size > c.max/4 {
		return
	}
	for c.total+size > c.max && len(c.order) > 0 {
		old := c.order[0]
		c.order = c.order[1:]
		c.total -= c.sizes[old]
		delete(c.specs, old)
		delete(c.sizes, old)
	}
	c.specs[digest], c.sizes[digest] = s, size
	c.order = append(c.order, digest)
	c.total += size
}

// resolve checks a request against its image and fills in the defaults.
func resolve(req Request, img *bytecode.Image, spec *ebpf.CollectionSpec) (Identity, error) {
	id := Identity{
		Digest:    img.Digest,
		Program:   req.Program,
		Hook:      req.Hook,
		Interface: req.Interface,
		Netns:     req.Netns,
		Pod:       req.Pod,
		Container: req.Container,
		Cgroup:    req.Cgroup,
		AttachTo:  req.AttachTo,
		Direction: req.Direction,
		Priority:  req.Priority,
		XDPMode:   req.XDPMode,
	}
	names := img.ProgramNames()
	if id.Program == "" {
		if len(names) != 1 {
			return id, fault.Errorf(fault.Invalid, "image %q holds %d programs (%s): set the program attribute to one of them",
				img.Reference, len(names), strings.Join(names, ", "))
		}
		id.Program = names[0]
	}
	labelType, inLabels := img.Programs[id.Program]
	ps, inObject := spec.Programs[id.Program]
	if !inLabels || !inObject {
		return id, fault.Errorf(fault.Invalid, "program %q not in image %q (it holds: %s)", id.Program, img.Reference, strings.Join(names, ", "))
	}
	if id.Hook == "" {
		id.Hook = Hook(labelType)
		if !slices.Contains(Hooks, id.Hook) {
			return id, fault.Errorf(fault.Invalid, "program %q of image %q is of type %q (from its labels); bpfmount attaches %s programs",
				id.Program, img.Reference, labelType, hookList(Hooks))
		}
	}
	if want := programTypeOf(id.Hook); ps.Type != want {
		return id, fault.Errorf(fault.Invalid, "program %q of image %q is a %s program; it cannot attach to hook %q",
			id.Program, img.Reference, ps.Type, id.Hook)
	}
	if IsTracing(id.Hook) {
		return resolveTracing(id, req, img, spec)
	}
	if !IsCgroupHook(id.Hook) {
		if err := checkNotCgroup(id); err != nil {
			return id, err
		}
		if id.Interface == "" {
			return id, fault.Errorf(fault.Invalid, "hook %s needs interface: the host interface to attach to, e.g. eth0", id.Hook)
		}
	}
	switch id.Hook {
	case HookCgroupSKB, HookCgroupSockAddr, HookSockOps:
		if err := resolveCgroup(&id, ps); err != nil {
			return id, err
		}
	case HookXDP:
		if id.Direction != "" {
			return id, fault.Errorf(fault.Invalid, "direction applies to tc and tcx, not xdp")
		}
		if id.XDPMode == "" {
			id.XDPMode = XDPModeAuto
		}
	case HookTC, HookTCX:
		if id.Direction != Ingress && id.Direction != Egress {
			return id, fault.Errorf(fault.Invalid, "hook %s needs direction ingress or egress", id.Hook)
		}
		if id.XDPMode != "" {
			return id, fault.Errorf(fault.Invalid, "xdpMode applies to xdp, not %s", id.Hook)
		}
	}
	if id.Priority == 0 {
		id.Priority = DefaultPriority
	}
	if id.Priority < 1 || id.Priority > 1000 {
		return id, fault.Errorf(fault.Invalid, "priority %d is out of range 1..1000", id.Priority)
	}
	proceed, err := resolveProceedOn(id.Hook, req.ProceedOn)
	if err != nil {
		return id, err
	}
	id.ProceedOn = proceed
	if err := resolveGlobals(&id, req, img, spec); err != nil {
		return id, err
	}
	return id, nil
}

// resolveTracing checks a tracing request: its target, and none of the
// network hooks' keys.
func resolveTracing(id Identity, req Request, img *bytecode.Image, spec *ebpf.CollectionSpec) (Identity, error) {
	for _, k := range []struct {
		key string
		set bool
	}{
		{"interface", id.Interface != ""}, {"direction", id.Direction != ""}, {"priority", id.Priority != 0},
		{"proceedOn", len(req.ProceedOn) > 0}, {"xdpMode", id.XDPMode != ""},
	} {
		if k.set {
			return id, fault.Errorf(fault.Invalid, "%s does not apply to type %s (the kernel runs any number of programs on one tracing hook): remove it", k.key, id.Hook)
		}
	}
	if _, err := ParseAttachTo(id.Hook, id.AttachTo); err != nil {
		return id, err
	}
	// After the target: a request without type whose attachTo names a
	// socket operation was taken for cgroup_sock_addr, its pod's cgroup
	// found.
	if id.Cgroup != "" || id.Netns != "" || id.Pod != "" && id.Container == "" {
		return id, fault.Errorf(fault.Invalid, "type %s attaches to its attachTo target, not to a cgroup or a network namespace (a request without type whose attachTo names a socket operation is taken for cgroup_sock_addr: set type)", id.Hook)
	}
	return id, resolveGlobals(&id, req, img, spec)
}

func resolveGlobals(id *Identity, req Request, img *bytecode.Image, spec *ebpf.CollectionSpec) error {
	if len(req.Globals) > 0 {
		id.Globals = map[string]string{}
		for name, val := range req.Globals {
			v, ok := spec.Variables[name]
			if !ok {
				return fault.Errorf(fault.Invalid, "global %q not in program object of image %q (it has: %s)", name, img.Reference, strings.Join(globalNames(spec), ", "))
			}
			if int(v.Size()) != len(val) {
				return fault.Errorf(fault.Invalid, "global %q is %d bytes but the value given is %d bytes (give exactly %d bytes as %d hex digits, in the node's byte order)",
					name, v.Size(), len(val), v.Size(), 2*v.Size())
			}
			id.Globals[name] = hex.EncodeToString(val)
		}
	}
	return nil
}

func resolveProceedOn(h Hook, actions []string) ([]string, error) {
	var table map[string]uint32
	switch h {
	case HookXDP:
		table = XDPActions
	case HookTC:
		table = TCActions
	default:
		if len(actions) > 0 {
			return nil, fault.Errorf(fault.Invalid, "proceedOn applies to xdp and tc; %s programs chain by returning TCX_NEXT", h)
		}
		return nil, nil
	}
	if len(actions) == 0 {
		return DefaultProceedOn(h), nil
	}
	out := make([]string, 0, len(actions))
	for _, a := range actions {
		if _, ok := table[a]; !ok {
			return nil, fault.Errorf(fault.Invalid, "proceedOn action %q is not a %s action (valid: %s)", a, h, strings.Join(ActionNames(h), ", "))
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return out, nil
}

// ActionNames lists the proceed-on action names of a hook, sorted.
func ActionNames(h Hook) []string {
	table := XDPActions
	if h == HookTC {
		table = TCActions
	}
	out := make([]string, 0, len(table))
	for k := range table {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func globalNames(spec *ebpf.CollectionSpec) []string {
	var out []string
	for n := range spec.Variables {
		out = append(out, n)
	}
	sort.Strings(out)
	if len(out) == 0 {
		out = []string{"none"}
	}
	return out
}

// collectionFor makes, from the cached spec, the spec of one load: its one
// program, the globals applied. It copies only what it changes (the
// program's attach type or target, the variables set) and shares the rest
// with the cache read only: ebpf.NewCollection copies each map and program
// spec before it changes it, and reads the object's BTF only (it is safe
// for concurrent use). spec.Copy would copy all of the object, its BTF
// included, on every publish. Whoever changes the result beyond this
// must copy what it changes.
func collectionFor(id Identity, spec *ebpf.CollectionSpec) (*ebpf.CollectionSpec, error) {
	cs := &ebpf.CollectionSpec{
		Maps:      maps.Clone(spec.Maps),
		Programs:  map[string]*ebpf.ProgramSpec{},
		Variables: maps.Clone(spec.Variables),
		Types:     spec.Types,
		ByteOrder: spec.ByteOrder,
	}
	if ps := spec.Programs[id.Program]; ps != nil {
		// A shallow copy: its instructions stay shared, and the library
		// copies them before it rewrites them.
		own := *ps
		cs.Programs[id.Program] = &own
	}
	if id.Hook == HookFentry || id.Hook == HookFexit {
		// The trampoline's target is fixed at load.
		t, err := ParseAttachTo(id.Hook, id.AttachTo)
		if err != nil {
			return nil, err
		}
		if ps := cs.Programs[id.Program]; ps != nil {
			ps.AttachTo = t.Symbol
			ps.AttachType = ebpf.AttachTraceFEntry
			if id.Hook == HookFexit {
				ps.AttachType = ebpf.AttachTraceFExit
			}
		}
	}
	for name, h := range id.Globals {
		val, err := hex.DecodeString(h)
		if err != nil {
			return nil, fault.Errorf(fault.Invalid, "global %q: %v", name, err)
		}
		v := cs.Variables[name]
		if v == nil {
			return nil, fault.Errorf(fault.Invalid, "global %q not in program object", name)
		}
		own := *v
		own.Value = val
		cs.Variables[name] = &own
	}
	setCgroupAttachType(cs, id)
	return cs, nil
}

func describeIdentity(id Identity) string {
	if IsTracing(id.Hook) && id.Container != "" {
		return fmt.Sprintf("program %q (%s on %s in container %s of pod %s)", id.Program, id.Hook, id.AttachTo, id.Container, id.Pod)
	}
	if IsTracing(id.Hook) {
		return fmt.Sprintf("program %q (%s on %s)", id.Program, id.Hook, id.AttachTo)
	}
	s := fmt.Sprintf("program %q (%s on %s", id.Program, id.Hook, targetName(id))
	if id.Direction != "" {
		s += " " + id.Direction
	}
	return s + fmt.Sprintf(", priority %d)", id.Priority)
}
