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

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
)

// Replaced says what an upgrade in place did.
type Replaced struct {
	// From is the identity that was replaced.
	From Identity
	// Carried are the maps the new program reuses (same name, type, key
	// and value size, max entries and flags): their contents carry on.
	Carried []string
	// Reset are the old maps whose shape changed: the new program has new,
	// empty ones.
	Reset []string
	// Owners are the old attachment's owners, now the new one's.
	Owners []string
}

// replaceLoaded, when set (by tests only), runs in Replace between the new
// version's load and the swap.
var replaceLoaded func()

// Replace puts the program r describes in the place of the attachment
// oldKey, atomically, so no packet meets neither program and none meets
// both: a direct attachment with a bpf_link (tcx, a lone XDP program,
// cgroup hooks) gets one link update; a dispatcher member gets a new
// dispatcher revision with the new program in the old one's slot. Maps
// carry over by name when their shape matches (the new program uses the
// same kernel maps); the others start empty. The old attachment's owners
// become the new one's, with owner added. Tracing programs cannot be
// replaced.
//
// Crash safety: the new program's pins are made first, beside the old
// ones; the commit is moving the link's pin into the new directory (a
// rename), or for a dispatcher member the revision swap; RecoverReplace
// finishes or undoes an interrupted Replace from the pins.
func (l *Loader) Replace(ctx context.Context, oldKey string, r *Resolved, owner string) (*Program, *Replaced, error) {
	l.gc.RLock()
	defer l.gc.RUnlock()
	id := r.Identity
	key := id.Key()
	if IsTracing(id.Hook) {
		// Perf-event and tracing links cannot swap their program; the
		// kernel runs any number of programs on one target, so the new
		// version can attach beside the old one instead.
		return nil, nil, fault.Errorf(fault.Precondition, "upgrading %s in place is not supported for tracing hooks: use another name, or unload the old version first", describeIdentity(id))
	}
	if l.chained(id) {
		return l.replaceMember(ctx, oldKey, r, owner)
	}
	// Order as Acquire's: key, then target. The key lock keeps other
	// requests for the new identity waiting; the new version loads (the
	// verifier's work) without the target lock, on its own handles of the
	// old maps, and only the swap is serialized with the target's other
	// attaches and releases.
	unlockKey := l.lockKey(key)
	defer unlockKey()
	old, oldMaps, err := l.replaceable(oldKey, id)
	if err != nil {
		return nil, nil, err
	}
	defer closeMaps(oldMaps)
	cs, repl, rep, err := newVersion(ctx, r, old, oldMaps)
	if err != nil {
		return nil, nil, err
	}
	coll, err := ebpf.NewCollectionWithOptions(cs, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return nil, nil, classifyLoadError(id, err)
	}
	if replaceLoaded != nil {
		replaceLoaded()
	}
	unlock := l.lockTarget(id)
	defer unlock()
	// While the new version loaded, the old one may have been released
	// (or upgraded by another name's version), or the new identity
	// adopted: the swap needs both as they were.
	l.mu.Lock()
	gone, cur := l.entries[oldKey] != old, l.entries[key]
	l.mu.Unlock()
	switch {
	case gone:
		coll.Close()
		return nil, nil, fault.Errorf(fault.NotFound, "the program to upgrade (%s) was unloaded while its new version loaded", oldKey)
	case cur != nil:
		coll.Close()
		return nil, nil, fault.Errorf(fault.Precondition, "%s is already loaded: nothing to upgrade", describeIdentity(id))
	}
	e := &entry{id: id, key: key, owners: map[string]struct{}{}, mode: old.mode, created: old.created}
	e.take(coll)
	undo := func() {
		e.closeFDs()
		l.removePins(key)
	}
	// The new program and maps pinned beside the old ones, no link yet.
	if err := l.pin(e); err != nil {
		undo()
		return nil, nil, err
	}
	failpoint.Hit("replace.pinned")
	if err := old.link.Update(e.prog); err != nil {
		undo()
		return nil, nil, fmt.Errorf("replacing %s with %s: %w", describeIdentity(old.id), describeIdentity(id), err)
	}
	failpoint.Hit("replace.updated")
	// The commit: the link's pin moves into the new directory.
	if err := old.link.Pin(filepath.Join(l.pinDir(key), "link")); err != nil {
		if uerr := old.link.Update(old.prog); uerr != nil {
			err = errors.Join(err, fmt.Errorf("putting the old program back: %w", uerr))
		}
		undo()
		return nil, nil, fmt.Errorf("moving the link of %s: %w", describeIdentity(id), err)
	}
	failpoint.Hit("replace.committed")
	e.link, e.attached = old.link, old.attached
	if pid, err := attachedProgramID(e); err == nil {
		e.progID = pid
	}
	old.link = nil
	return l.succeed(old, e, owner, rep), rep, nil
}

// newVersion is the spec of r's program, the new version, and the old
// version's maps it carries over, once ctx still wants it.
func newVersion(ctx context.Context, r *Resolved, old *entry, oldMaps map[string]*ebpf.Map) (*ebpf.CollectionSpec, map[string]*ebpf.Map, *Replaced, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, nil, err
	}
	cs, err := collectionFor(r.Identity, r.spec)
	if err != nil {
		return nil, nil, nil, err
	}
	repl, rep := carryOver(cs, old, oldMaps)
	return cs, repl, rep, nil
}

// carryOver pairs the maps of the new version's spec with the old
// version's open maps by name: those of the same shape are reused (the
// MapReplacements of the new load), the others start empty.
func carryOver(cs *ebpf.CollectionSpec, old *entry, oldMaps map[string]*ebpf.Map) (map[string]*ebpf.Map, *Replaced) {
	rep := &Replaced{From: old.id}
	repl := map[string]*ebpf.Map{}
	for name, ms := range cs.Maps {
		om := oldMaps[name]
		if strings.HasPrefix(name, ".") || om == nil {
			continue
		}
		if ms.Compatible(om) == nil {
			repl[name] = om
			rep.Carried = append(rep.Carried, name)
		} else {
			rep.Reset = append(rep.Reset, name)
		}
	}
	sort.Strings(rep.Carried)
	sort.Strings(rep.Reset)
	return repl, rep
}

// succeed records e, which took old's place, with old's owners and owner,
// and lets old go: its program's descriptors and pins (maps not carried
// over live on only in the volumes that mount them).
func (l *Loader) succeed(old, e *entry, owner string, rep *Replaced) *Program {
	l.mu.Lock()
	for o := range old.owners {
		e.owners[o] = struct{}{}
		rep.Owners = append(rep.Owners, o)
	}
	e.owners[owner] = struct{}{}
	delete(l.entries, old.key)
	l.entries[e.key] = e
	p := e.snapshot(false)
	l.mu.Unlock()
	sort.Strings(rep.Owners)
	old.closeFDs()
	if err := l.removePins(old.key); err != nil {
		klog.ErrorS(err, "Removing the pins of a replaced program; garbage collection retries", "key", old.key)
	}
	klog.InfoS("Replaced program in place", "from", old.key, "to", e.key, "program", e.id.Program, "hook", e.id.Hook, "interface", e.id.Interface,
		"direction", e.id.Direction, "id", e.progID, "carried", rep.Carried, "reset", rep.Reset)
	return p
}

// replaceMember is Replace for a dispatcher member: the new version loads
// as a member on its own handles of the old maps, and a new revision of
// the dispatcher runs it in the old member's slot (same priority and
// position); the revision swap is the commit, as for every chain change.
func (l *Loader) replaceMember(ctx context.Context, oldKey string, r *Resolved, owner string) (_ *Program, _ *Replaced, err error) {
	id, key := r.Identity, r.Identity.Key()
	// Both keys, in a fixed order: the new one keeps other requests for
	// the new identity waiting, the old one the old member's releases and
	// joins (which take its key, as on every dispatcher member), until
	// the swap is done or given up.
	unlock := l.lockKeys(key, oldKey)
	defer unlock()
	old, oldMaps, err := l.replaceable(oldKey, id)
	if err != nil {
		return nil, nil, err
	}
	defer closeMaps(oldMaps)
	if old.chain == nil || !old.attached {
		return nil, nil, fault.Errorf(fault.Precondition, "%s is not running in its dispatcher (its interface went away): nothing to upgrade in place; unpublish its volumes first", describeIdentity(old.id))
	}
	cs, repl, rep, err := newVersion(ctx, r, old, oldMaps)
	if err != nil {
		return nil, nil, err
	}
	ext, err := dispatcher.LoadMember(dispatcher.Hook(id.Hook), cs, id.Program, &ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return nil, nil, classifyLoadError(id, err)
	}
	if replaceLoaded != nil {
		replaceLoaded()
	}
	e := &entry{id: id, key: key, prog: ext.Program, maps: ext.Maps, chain: old.chain, created: old.created, owners: map[string]struct{}{}}
	defer func() {
		if err != nil {
			e.destroy()
			l.removePins(key)
		}
	}()
	// Both keys stay locked, so the old member is still recorded and the
	// new identity not: unlike Replace's own link path, nothing needs
	// checking again before the swap.
	if err := e.readProgID(); err != nil {
		return nil, nil, err
	}
	// The new program and maps pinned beside the old ones, in no
	// revision yet.
	if err := l.pin(e); err != nil {
		return nil, nil, err
	}
	failpoint.Hit("replace.pinned")
	m := dispatcher.Member{Key: key, Name: id.Program, Program: e.prog, Priority: id.Priority, ProceedOn: proceedMask(id), Frags: ext.Frags}
	if err := old.chain.Replace(oldKey, m); err != nil {
		return nil, nil, fmt.Errorf("replacing %s with %s in its dispatcher: %w", describeIdentity(old.id), describeIdentity(id), l.chainError(id, err))
	}
	failpoint.Hit("replace.updated")
	e.attached, e.mode = true, old.chain.Mode()
	return l.succeed(old, e, owner, rep), rep, nil
}

// lockKeys locks two identity keys in a fixed order (no two callers can
// wait for each other) and returns the function that unlocks both.
func (l *Loader) lockKeys(a, b string) func() {
	if b < a {
		a, b = b, a
	}
	ua := l.lockKey(a)
	ub := l.lockKey(b)
	return func() { ub(); ua() }
}

// replaceable checks that the attachment oldKey can be replaced by id and
// returns it with new handles on its maps (by name), which stay valid
// should it be released meanwhile. The caller closes them.
func (l *Loader) replaceable(oldKey string, id Identity) (*entry, map[string]*ebpf.Map, error) {
	key := id.Key()
	l.mu.Lock()
	defer l.mu.Unlock()
	old, cur := l.entries[oldKey], l.entries[key]
	switch {
	case old == nil:
		return nil, nil, fault.Errorf(fault.NotFound, "the program to upgrade (%s) is no longer loaded", oldKey)
	case cur != nil:
		return nil, nil, fault.Errorf(fault.Precondition, "%s is already loaded: nothing to upgrade", describeIdentity(id))
	case !l.chained(old.id) && old.link == nil:
		return nil, nil, fault.Errorf(fault.Precondition, "%s has no link to update: it cannot be upgraded in place; unpublish its volumes first", describeIdentity(old.id))
	case old.id.Hook != id.Hook || old.id.Interface != id.Interface || old.id.Netns != id.Netns ||
		old.id.Cgroup != id.Cgroup || old.id.AttachTo != id.AttachTo || old.id.Direction != id.Direction:
		return nil, nil, fault.Errorf(fault.Invalid, "%s cannot replace %s: another hook", describeIdentity(id), describeIdentity(old.id))
	}
	// A Release takes the entry out of l.entries under l.mu before it
	// closes anything, so its maps are open while l.mu is held here.
	maps := make(map[string]*ebpf.Map, len(old.maps))
	for name, m := range old.maps {
		c, err := m.Clone()
		if err != nil {
			closeMaps(maps)
			return nil, nil, fmt.Errorf("opening map %q of %s: %w", name, describeIdentity(old.id), err)
		}
		maps[name] = c
	}
	return old, maps, nil
}

// closeMaps closes the handles replaceable opened.
func closeMaps(maps map[string]*ebpf.Map) {
	for _, m := range maps {
		m.Close()
	}
}

// RecoverReplace finishes or undoes, from the pins alone, a Replace from
// one identity to another that a crash interrupted. It runs before Adopt.
// When the new directory holds the link (the commit), the upgrade stands:
// the old pins go and done is true. Otherwise the link is pointed back at
// the old program and the new pins go.
func (l *Loader) RecoverReplace(from, to Identity) (done bool, err error) {
	l.gc.RLock()
	defer l.gc.RUnlock()
	oldKey, newKey := from.Key(), to.Key()
	if l.chained(from) {
		return l.recoverMember(from, to)
	}
	if _, err := os.Stat(filepath.Join(l.pinDir(newKey), "link")); err == nil {
		return true, l.removePins(oldKey)
	}
	oldDir := l.pinDir(oldKey)
	lnk, err := link.LoadPinnedLink(filepath.Join(oldDir, "link"), nil)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("opening the link of %s: %w", describeIdentity(from), err)
	}
	if lnk != nil {
		defer lnk.Close()
		prog, err := ebpf.LoadPinnedProgram(filepath.Join(oldDir, "program"), nil)
		if err != nil {
			return false, fmt.Errorf("opening the program of %s: %w", describeIdentity(from), err)
		}
		defer prog.Close()
		li, lerr := lnk.Info()
		var pid ebpf.ProgramID
		if pi, perr := prog.Info(); perr == nil {
			pid, _ = pi.ID()
		}
		if lerr != nil || pid == 0 || li.Program != pid {
			if err := lnk.Update(prog); err != nil {
				return false, fmt.Errorf("putting %s back on its link: %w", describeIdentity(from), err)
			}
		}
	}
	return false, l.removePins(newKey)
}

// recoverMember is RecoverReplace for a dispatcher member: opening the
// chain adopts the revision the interface runs and removes the others (one
// built for the upgrade and never swapped in, or the one it swapped out).
// The upgrade stands when that revision holds the new member.
func (l *Loader) recoverMember(from, to Identity) (bool, error) {
	oldKey, newKey := from.Key(), to.Key()
	ifc, err := l.iface(from.Interface)
	if err != nil {
		// The interface went away, and with it what either version ran:
		// the older version stays recorded, without a chain.
		return false, l.removePins(newKey)
	}
	chain, err := l.chainFor(targetOf(from, ifc.Index))
	if err != nil {
		return false, err
	}
	if slices.ContainsFunc(chain.Members(), func(m dispatcher.Member) bool { return m.Key == newKey }) {
		return true, l.removePins(oldKey)
	}
	return false, l.removePins(newKey)
}
