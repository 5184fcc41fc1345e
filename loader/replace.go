package loader

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/fault"
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
// oldKey: one link update, so no packet meets neither program and none
// meets both. Maps carry over by name when their shape matches (the new
// program uses the same kernel maps); the others start empty. The old
// attachment's owners become the new one's, with owner added. Only direct
// attachments with a bpf_link (tcx, a lone XDP program, cgroup hooks) can
// be replaced.
//
// Crash safety: the new program's pins are made first, beside the old
// ones; moving the link's pin into the new directory (a rename) is the
// commit; RecoverReplace finishes or undoes an interrupted Replace from
// the pins.
func (l *Loader) Replace(ctx context.Context, oldKey string, r *Resolved, owner string) (*Program, *Replaced, error) {
	l.gc.RLock()
	defer l.gc.RUnlock()
	id := r.Identity
	key := id.Key()
	if l.chained(id.Hook) {
		return nil, nil, fault.Errorf(fault.Precondition, "upgrading %s in place goes through its dispatcher, which bpfmount cannot do yet: unload the old version first", describeIdentity(id))
	}
	if IsTracing(id.Hook) {
		// Perf-event and tracing links cannot swap their program; the
		// kernel runs any number of programs on one target, so the new
		// version can attach beside the old one instead.
		return nil, nil, fault.Errorf(fault.Precondition, "upgrading %s in place is not supported for tracing hooks: use another name, or unload the old version first", describeIdentity(id))
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
	defer func() {
		for _, m := range oldMaps {
			m.Close()
		}
	}()
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	cs, err := collectionFor(id, r.spec)
	if err != nil {
		return nil, nil, err
	}
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
	e := &entry{id: id, key: key, owners: map[string]struct{}{}, maps: map[string]*ebpf.Map{}, mode: old.mode, created: old.created}
	e.prog = coll.Programs[id.Program]
	delete(coll.Programs, id.Program)
	for name, m := range coll.Maps {
		if !strings.HasPrefix(name, ".") {
			e.maps[name] = m
			delete(coll.Maps, name)
		}
	}
	coll.Close()
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
	l.mu.Lock()
	for o := range old.owners {
		e.owners[o] = struct{}{}
		rep.Owners = append(rep.Owners, o)
	}
	e.owners[owner] = struct{}{}
	delete(l.entries, oldKey)
	l.entries[key] = e
	p := e.snapshot(false)
	l.mu.Unlock()
	sort.Strings(rep.Owners)
	// The old program goes; maps not carried over live on only in the
	// volumes that mount them.
	old.link = nil
	old.closeFDs()
	if err := l.removePins(oldKey); err != nil {
		klog.ErrorS(err, "Removing the pins of a replaced program; garbage collection retries", "key", oldKey)
	}
	klog.InfoS("Replaced program in place", "from", oldKey, "to", key, "program", id.Program, "hook", id.Hook, "interface", id.Interface,
		"id", e.progID, "carried", rep.Carried, "reset", rep.Reset)
	return p, rep, nil
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
	case old.chain != nil || old.link == nil:
		return nil, nil, fault.Errorf(fault.Precondition, "%s runs in a dispatcher: upgrading it in place is not supported yet", describeIdentity(old.id))
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
			for _, c := range maps {
				c.Close()
			}
			return nil, nil, fmt.Errorf("opening map %q of %s: %w", name, describeIdentity(old.id), err)
		}
		maps[name] = c
	}
	return old, maps, nil
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
