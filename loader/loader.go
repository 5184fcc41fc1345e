package loader

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/loader/bytecode"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
)

// Options configure a Loader.
type Options struct {
	// Root is a directory on a bpffs where the loader keeps its pins.
	Root string
	// Fetcher resolves image references.
	Fetcher bytecode.Fetcher
	// NodeName names this host in error messages.
	NodeName string
	// LibxdpDir, when set, is libxdp's pin directory (<bpffs>/xdp): XDP
	// chains are shared with libxdp (dispatcher.WithLibxdpPins), so that
	// libxdp's tools list and join them and bpfmount joins libxdp's.
	LibxdpDir string
	// MountTracefs lets the loader mount tracefs at /sys/kernel/tracing
	// when a tracepoint needs it and none is mounted.
	MountTracefs bool
	// CgroupRoot is where the node's cgroup hierarchy is mounted (empty:
	// /sys/fs/cgroup): a container's uprobe is kept to the container's
	// cgroup, found there.
	CgroupRoot string
}

// Loader loads, attaches, pins and shares eBPF programs. It is safe for
// concurrent use; work on one interface is serialized.
type Loader struct {
	root     string
	node     string
	fetch    bytecode.Fetcher
	canChain bool // the kernel accepts freplace, so dispatchers can run
	libxdp   string
	// missing names, per tracing hook this kernel cannot run, the kernel
	// feature it lacks. It probes at its first call, the first tracing
	// request: the probes parse the kernel's BTF and attach a trampoline,
	// tens of milliseconds a start would otherwise wait for. The map is
	// read only.
	missing      func() map[Hook]string
	mountTracefs bool
	cgroupRoot   string
	tracefsMu    sync.Mutex

	// gc lets Prune see a consistent world: loads and releases hold it
	// shared, Prune exclusively, so it never removes the pins of an
	// attachment that is being created.
	gc sync.RWMutex

	mu      sync.Mutex
	entries map[string]*entry            // by Identity.Key
	ifaces  namedLocks                   // direct attachments: one interface at a time
	keys    namedLocks                   // dispatcher members: one identity key at a time
	chains  map[string]*dispatcher.Chain // by dispatcher.PinDirName (a pod's: podChainName)
	// podBuilds counts the revisions of pod interfaces' chains closed
	// since, by hook (and direction), so that Chains' counts only grow.
	podBuilds map[string]uint64
	specs     specCache // parsed objects by image digest
}

// entry is one loaded and attached program and the owners sharing it.
type entry struct {
	id       Identity
	key      string
	prog     *ebpf.Program
	link     link.Link
	maps     map[string]*ebpf.Map
	progID   ebpf.ProgramID
	mode     string
	attached bool
	chain    *dispatcher.Chain // the dispatcher it is a member of, if any
	created  time.Time
	owners   map[string]struct{}
	// netns and netnsIno say where a deferred attachment's link is (see
	// AttachNetns); empty while it has none. For a container's uprobe
	// (AttachContainer) they are "pid:N" and that process's start time.
	netns    string
	netnsIno uint64
}

// Program describes an attachment as the loader holds it.
type Program struct {
	Identity Identity
	Key      string
	// ID is the kernel's program ID.
	ID ebpf.ProgramID
	// AttachMode is how an XDP program is attached ("native" or "skb").
	AttachMode string
	// Attached is false when the link lost its target (the interface went
	// away); the maps stay usable.
	Attached bool
	// Shared is true when the request joined an existing attachment.
	Shared bool
	// Maps are the object's maps, by name. They belong to the loader and
	// stay valid until the owner releases the program: clone, never close.
	Maps map[string]*ebpf.Map
	// Owners counts the owners sharing the attachment.
	Owners int
	// Netns is where a deferred attachment (Identity.Pod) is attached:
	// the namespace path AttachNetns was given, or "pid:N" for a
	// container's uprobe (AttachContainer); "" while it is not.
	Netns string
}

// New returns a loader keeping its pins under opts.Root, which must be on a
// bpffs.
func New(opts Options) (*Loader, error) {
	if opts.Fetcher == nil {
		return nil, errors.New("loader: no fetcher")
	}
	if err := os.MkdirAll(filepath.Join(opts.Root, "programs"), 0o700); err != nil {
		return nil, fmt.Errorf("creating pin directory under %s: %w", opts.Root, err)
	}
	l := &Loader{
		root:         opts.Root,
		libxdp:       opts.LibxdpDir,
		node:         opts.NodeName,
		fetch:        opts.Fetcher,
		canChain:     dispatcher.Supported() == nil,
		missing:      sync.OnceValue(probeAndLog),
		mountTracefs: opts.MountTracefs,
		cgroupRoot:   opts.CgroupRoot,
		entries:      map[string]*entry{},
		chains:       map[string]*dispatcher.Chain{},
		specs:        newSpecCache(specCacheBytes),
	}
	if !l.canChain {
		klog.InfoS("Kernel rejects freplace (BPF_PROG_TYPE_EXT): XDP and TC dispatchers are unavailable; a lone XDP program attaches directly and tcx keeps working")
	}
	return l, nil
}

// probeAndLog probes the tracing features and logs, once, each hook the
// kernel cannot run.
func probeAndLog() map[Hook]string {
	missing := probeTracing()
	for _, h := range TracingHooks {
		if why, ok := missing[h]; ok {
			klog.InfoS("Kernel cannot run this tracing hook; volumes asking for it fail", "hook", h, "lacks", why)
		}
	}
	return missing
}

// CanChain reports whether the kernel supports the dispatchers.
func (l *Loader) CanChain() bool { return l.canChain }

func (l *Loader) lockIface(name string) func() { return l.ifaces.lock(name) }

// lockTarget serializes work on what id attaches to: its interface (in
// its network namespace), its cgroup, or its tracing target (see
// lockName).
func (l *Loader) lockTarget(id Identity) func() { return l.ifaces.lock(lockName(id)) }

func (l *Loader) lockKey(key string) func() { return l.keys.lock(key) }

func (l *Loader) pinDir(key string) string { return filepath.Join(l.root, "programs", key) }

// Resolved is a request checked against its image, ready to attach.
type Resolved struct {
	Identity Identity
	Image    *bytecode.Image
	// Maps lists the object's maps (internal .rodata/.data/.bss left out).
	Maps []string
	spec *ebpf.CollectionSpec
}

// Resolve fetches the request's image and checks the request against it
// without touching the kernel.
func (l *Loader) Resolve(ctx context.Context, req Request) (*Resolved, error) {
	img, err := l.fetch.Fetch(ctx, req.Image)
	if err != nil {
		return nil, err
	}
	spec, err := l.spec(img)
	if err != nil {
		return nil, err
	}
	id, err := resolve(req, img, spec)
	if err != nil {
		return nil, err
	}
	if err := l.CheckHook(id.Hook); err != nil {
		return nil, err
	}
	if err := checkDeferred(id); err != nil {
		return nil, err
	}
	r := &Resolved{Identity: id, Image: img, spec: spec}
	for name := range spec.Maps {
		if !strings.HasPrefix(name, ".") {
			r.Maps = append(r.Maps, name)
		}
	}
	sort.Strings(r.Maps)
	return r, nil
}

// Acquire joins the attachment with r's identity or creates it, and records
// owner as one of its owners. On error nothing is left loaded, attached or
// pinned.
func (l *Loader) Acquire(ctx context.Context, r *Resolved, owner string) (*Program, error) {
	l.gc.RLock()
	defer l.gc.RUnlock()
	if l.chained(r.Identity) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return l.acquireChained(r, owner)
	}
	if l.podChained(r.Identity) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return l.acquirePodMember(r, owner)
	}
	key := r.Identity.Key()
	// Joining an existing attachment needs no interface lock: join and
	// Release's last-owner check both run under l.mu, and Release takes
	// the entry out of l.entries in that same critical section, so a join
	// either lands before it (and keeps the program) or finds nothing.
	if p := l.join(key, owner); p != nil {
		return p, nil
	}
	// Requests for one identity wait for each other here, so the first
	// loads and the rest join; requests for other programs on the same
	// interface load in parallel and queue only to attach. A Release of
	// the same key that finds no entry removes its pin directory under
	// this lock, never while pins are being made here. (Order: key, then
	// interface; Release and Adopt take one of the two, never both.)
	unlockKey := l.lockKey(key)
	defer unlockKey()
	if p := l.join(key, owner); p != nil {
		return p, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	e, ifc, err := l.prepare(r.Identity, r.spec)
	if err != nil {
		return nil, err
	}
	unlock := l.lockTarget(r.Identity)
	defer unlock()
	// Adopt takes only the interface lock: it may have recorded this
	// identity meanwhile.
	if p := l.join(key, owner); p != nil {
		e.closeFDs()
		return p, nil
	}
	if err := l.attach(e, ifc); err != nil {
		return nil, err
	}
	p := l.insert(key, owner, e)
	klog.V(2).InfoS("Attached program", "key", key, "program", r.Identity.Program, "hook", r.Identity.Hook,
		"interface", r.Identity.Interface, "netns", r.Identity.Netns, "cgroup", r.Identity.Cgroup, "attachTo", r.Identity.AttachTo, "direction", r.Identity.Direction, "priority", r.Identity.Priority, "id", e.progID, "mode", e.mode)
	return p, nil
}

// join adds owner to an existing attachment, or returns nil.
func (l *Loader) join(key, owner string) *Program {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[key]
	if e == nil {
		return nil
	}
	e.owners[owner] = struct{}{}
	return e.snapshot(true)
}

// insert records a new attachment with its first owner.
func (l *Loader) insert(key, owner string, e *entry) *Program {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.owners[owner] = struct{}{}
	l.entries[key] = e
	return e.snapshot(false)
}

// Release drops owner from the attachment with the given key; the last
// owner's release detaches the program and removes its pins. Releasing an
// unknown key removes any pins left under it, so it is idempotent.
func (l *Loader) Release(key, owner string) error {
	l.gc.RLock()
	defer l.gc.RUnlock()
	var e *entry
	var unlock func()
	for {
		l.mu.Lock()
		e = l.entries[key]
		l.mu.Unlock()
		if e == nil {
			return l.releaseUnknown(key)
		}
		if e.chain != nil && !e.id.Deferred() {
			unlock = l.lockKey(key)
		} else {
			unlock = l.lockTarget(e.id)
		}
		l.mu.Lock()
		if l.entries[key] == e {
			break // l.mu stays held
		}
		// While this waited for the lock, the entry was released (and
		// perhaps created anew by an Acquire): look again, never act on
		// a stale entry.
		l.mu.Unlock()
		unlock()
	}
	defer unlock()
	delete(e.owners, owner)
	if len(e.owners) > 0 {
		l.mu.Unlock()
		return nil
	}
	delete(l.entries, key)
	l.mu.Unlock()
	var err error
	if l.podChained(e.id) {
		err = l.leavePodChain(e)
	} else if e.chain != nil {
		// A new revision without this member; the chain's own copy of
		// the program goes with the old revision. On a deleted interface
		// the chain just drops the member's pins.
		err = e.chain.Update(nil, []string{key})
	}
	err = errors.Join(err, e.destroy())
	if rmErr := l.removePins(key); err == nil {
		err = rmErr
	}
	klog.V(2).InfoS("Detached program", "key", key, "program", e.id.Program, "hook", e.id.Hook, "interface", e.id.Interface)
	return err
}

// releaseUnknown removes the pins left under a key no attachment holds,
// under the key's lock, which every Acquire holds while it makes pins: an
// Acquire of the identical request either finished first (then its pins
// stay) or starts after the removal.
func (l *Loader) releaseUnknown(key string) error {
	unlock := l.lockKey(key)
	defer unlock()
	l.mu.Lock()
	e := l.entries[key]
	l.mu.Unlock()
	if e != nil {
		return nil // created meanwhile by another owner: not ours to remove
	}
	return l.removePins(key)
}

// Adopt re-opens the pins of an attachment created before a restart and
// records owner as one of its owners. It fails with fault.NotFound when the
// pins are gone. A link whose interface vanished is adopted with Attached
// false.
func (l *Loader) Adopt(id Identity, owner string) (*Program, error) {
	l.gc.RLock()
	defer l.gc.RUnlock()
	key := id.Key()
	unlock := l.lockTarget(id)
	defer unlock()
	if p := l.join(key, owner); p != nil {
		return p, nil
	}

	e, err := l.openPins(id, key)
	if err != nil {
		return nil, err
	}
	p := l.insert(key, owner, e)
	return p, nil
}

// Prune removes pin directories that no adopted or acquired attachment
// owns and that are not in keep, and returns their keys. It touches nothing
// outside the loader's own pin directory.
func (l *Loader) Prune(keep ...string) ([]string, error) {
	l.gc.Lock()
	defer l.gc.Unlock()
	chainErr := l.pruneChains()
	dir := filepath.Join(l.root, "programs")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, de := range ents {
		key := de.Name()
		l.mu.Lock()
		_, owned := l.entries[key]
		l.mu.Unlock()
		if owned || slices.Contains(keep, key) {
			continue
		}
		if err := l.removePins(key); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, key)
	}
	return removed, errors.Join(append(errs, chainErr)...)
}

// Programs returns a snapshot of every attachment, sorted by key.
func (l *Loader) Programs() []*Program {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*Program, 0, len(l.entries))
	for _, e := range l.entries {
		out = append(out, e.snapshot(false))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Close releases the loader's file descriptors. Pinned programs stay
// attached: that is what lets the daemon restart without a gap.
func (l *Loader) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.entries {
		e.closeFDs()
	}
	for _, c := range l.chains {
		c.Close() // pins stay: the dispatchers keep running
	}
	l.entries = map[string]*entry{}
	l.chains = map[string]*dispatcher.Chain{}
	return nil
}

func (l *Loader) removePins(key string) error {
	if strings.ContainsAny(key, "/.") || key == "" {
		return fmt.Errorf("refusing to remove pins of malformed key %q", key)
	}
	err := os.RemoveAll(l.pinDir(key))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing pins of %s: %w", key, err)
	}
	return nil
}

// snapshot must be called with l.mu held.
func (e *entry) snapshot(shared bool) *Program {
	return &Program{
		Identity: e.id, Key: e.key, ID: e.progID, AttachMode: e.mode,
		Attached: e.attached, Shared: shared, Maps: e.maps, Owners: len(e.owners), Netns: e.netns,
	}
}

// destroy detaches and closes everything. The link must be unpinned first:
// closing the last reference to an unpinned link is what detaches it.
func (e *entry) destroy() error {
	var errs []error
	if e.link != nil {
		if err := e.link.Unpin(); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpinning link: %w", err))
		}
	}
	e.closeFDs()
	return errors.Join(errs...)
}

func (e *entry) closeFDs() {
	if e.link != nil {
		e.link.Close()
	}
	if e.prog != nil {
		e.prog.Close()
	}
	for _, m := range e.maps {
		m.Close()
	}
}
