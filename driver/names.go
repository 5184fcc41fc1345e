package driver

import (
	"fmt"
	"regexp"
	"sync"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader"
)

// A name (the name attribute) is a node-wide handle on one load: identical
// requests under one name share the program as any identical requests do;
// a load under a name that holds a different program is refused, and map-
// only volumes (from:) find a program by its name. Who holds a name is
// read from the volume records and the lingering programs' records, so it
// needs no state of its own and survives a restart as they do.

// dnsLabelRE is an RFC 1123 label, as Kubernetes names are.
var dnsLabelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

func validName(s string) bool { return dnsLabelRE.MatchString(s) }

// nameHolder is a program held under a name.
type nameHolder struct {
	key    string
	id     loader.Identity
	progID uint32
	holder string // who holds it, for messages: a volume, or "lingering"
	node   bool   // held by the node's programs file
}

// holderOf returns the program loaded under name, or nil. Broken volumes
// hold nothing.
func (d *Driver) holderOf(name string) (*nameHolder, error) {
	recs, err := d.store.List()
	if err != nil {
		// An unreadable record could hold the name: refuse rather than
		// load a second program under it.
		return nil, fmt.Errorf("reading the volume records to find who holds name %q: %w", name, err)
	}
	for _, r := range recs {
		if r.Broken == "" && r.Attributes[AttrName] == name {
			h := &nameHolder{key: r.Key, id: r.Identity, progID: r.ProgramID, holder: fmt.Sprintf("volume %s", r.VolumeID)}
			if r.Pod.Name != "" {
				h.holder += fmt.Sprintf(" of pod %s/%s", clip(r.Pod.Namespace, maxLogValue), clip(r.Pod.Name, maxLogValue))
			}
			return h, nil
		}
	}
	ps, err := d.store.NodePrograms()
	if err != nil {
		return nil, fmt.Errorf("reading the node programs to find who holds name %q: %w", name, err)
	}
	for _, p := range ps {
		if p.Name == name {
			return &nameHolder{key: p.Key, id: p.Identity, progID: p.ProgramID, holder: "the node (programs file)", node: true}, nil
		}
	}
	ls, err := d.store.Lingers()
	if err != nil {
		return nil, fmt.Errorf("reading the lingering programs to find who holds name %q: %w", name, err)
	}
	for _, l := range ls {
		if l.Name == name {
			return &nameHolder{key: l.Key, id: l.Identity, progID: l.ProgramID,
				holder: fmt.Sprintf("a program kept attached until %s (keepAttached)", l.Deadline.Format("15:04:05Z07:00"))}, nil
		}
	}
	return nil, nil
}

// claimName takes name's lock and checks that a load of res may hold it:
// nobody holds it, the identical request does, or (when upgrades is true)
// pods' volumes hold another version of it on the same hook, which
// upgradeFrom then names: the load replaces it in place (upgrade.go). The
// returned function releases the lock once the volume's record is written
// (or the publish failed). An empty name claims nothing.
func (d *Driver) claimName(name string, res *loader.Resolved, upgrades bool) (unlock func(), upgradeFrom *nameHolder, err error) {
	if name == "" {
		return func() {}, nil, nil
	}
	unlock = d.names.lock(name)
	h, err := d.holderOf(name)
	switch {
	case err != nil:
	case h == nil || h.key == res.Identity.Key():
		h = nil
	case upgrades && !h.node && sameAttachPoint(h.id, res.Identity):
	default:
		err = nameTaken(name, h, res.Identity)
	}
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return unlock, h, nil
}

// nameTaken says why a load under a held name is refused.
func nameTaken(name string, h *nameHolder, want loader.Identity) error {
	have := h.id
	where := fmt.Sprintf("%s program %q on %s", have.Hook, have.Program, attachPoint(have))
	switch {
	case sameAttachPoint(have, want) && h.node:
		return fault.Errorf(fault.Precondition, "name %q holds %s (program id %d, held by %s) from another image digest or other globals; "+
			"the node's programs file owns it: change it there, or use another name",
			name, where, h.progID, h.holder)
	case sameAttachPoint(have, want):
		// Only a node program's load gets here: it does not upgrade pods'.
		return fault.Errorf(fault.Precondition, "name %q holds %s (program id %d, held by %s) from another image digest or other globals; "+
			"a node program does not replace a pod's: give it another name, or let the pods' volumes go first",
			name, where, h.progID, h.holder)
	}
	if !loader.IsTracing(have.Hook) && !loader.IsCgroupHook(have.Hook) {
		// Tracing and cgroup programs have no priority: nothing orders
		// them (a cgroup runs its programs in attach order).
		where += fmt.Sprintf(" with priority %d", have.Priority)
	}
	return fault.Errorf(fault.Precondition, "name %q already holds %s (program id %d, held by %s): "+
		"a load under a held name must be the identical request; use another name or unpublish that one first",
		name, where, h.progID, h.holder)
}

// attachPoint names where id attaches: an interface or a cgroup (with the
// direction or socket operation), or a tracing hook's target.
func attachPoint(id loader.Identity) string {
	s := targetOf(id)
	if loader.IsCgroupHook(id.Hook) && id.AttachTo != "" {
		s += " " + id.AttachTo
	}
	if id.Direction != "" {
		s += " " + id.Direction
	}
	return s
}

// sameAttachPoint reports whether two identities differ only in what an
// upgrade changes (image digest, globals).
func sameAttachPoint(a, b loader.Identity) bool {
	a.Digest, b.Digest, a.Globals, b.Globals = "", "", nil, nil
	return a.Key() == b.Key()
}

// namedMutex is a set of mutexes by name, made on demand and dropped when
// nobody holds or waits for them.
type namedMutex struct {
	mu sync.Mutex
	m  map[string]*namedEntry
}

type namedEntry struct {
	sync.Mutex
	refs int
}

func (n *namedMutex) lock(name string) func() {
	n.mu.Lock()
	if n.m == nil {
		n.m = map[string]*namedEntry{}
	}
	e := n.m[name]
	if e == nil {
		e = &namedEntry{}
		n.m[name] = e
	}
	e.refs++
	n.mu.Unlock()
	e.Lock()
	return func() {
		e.Unlock()
		n.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(n.m, name)
		}
		n.mu.Unlock()
	}
}
