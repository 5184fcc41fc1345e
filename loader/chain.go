package loader

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
)

// Programs on the xdp and tc hooks run through a dispatcher when the kernel
// supports freplace: each attachment is a member of the chain of its
// interface (and direction), and every change builds a new dispatcher
// revision that is swapped in atomically. Work on one key is serialized;
// different keys on one chain proceed together, so the chain can coalesce
// concurrent publishes into few revisions.

// chained reports whether id's hook goes through a dispatcher.
func (l *Loader) chained(id Identity) bool {
	// A pod's own interface has no dispatcher: its program attaches
	// directly, in whatever namespace the pod's sandbox has now.
	return l.canChain && !id.Deferred() && (id.Hook == HookXDP || id.Hook == HookTC)
}

func targetOf(id Identity, ifindex int) dispatcher.Target {
	return dispatcher.Target{Hook: dispatcher.Hook(id.Hook), Ifindex: ifindex, Interface: id.Interface, Direction: id.Direction, XDPMode: id.XDPMode}
}

// chainFor returns the open chain of a target, opening (and adopting) it
// from its pins on first use.
func (l *Loader) chainFor(t dispatcher.Target) (*dispatcher.Chain, error) {
	name := dispatcher.PinDirName(t)
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.chains[name]; ok {
		return c, nil
	}
	var opts []dispatcher.Option
	if l.libxdp != "" {
		opts = append(opts, dispatcher.WithLibxdpPins(l.libxdp))
	}
	c, err := dispatcher.Open(t, filepath.Join(l.root, "dispatchers", name), opts...)
	if err != nil {
		return nil, fmt.Errorf("opening the dispatcher of %s on %q: %w", t.Hook, t.Interface, err)
	}
	l.chains[name] = c
	return c, nil
}

func proceedMask(id Identity) uint32 {
	table := XDPActions
	if id.Hook == HookTC {
		table = TCActions // already shifted by one: TC_ACT_UNSPEC is -1
	}
	var mask uint32
	for _, a := range id.ProceedOn {
		mask |= 1 << table[a]
	}
	return mask
}

func (l *Loader) acquireChained(r *Resolved, owner string) (_ *Program, err error) {
	id, key := r.Identity, r.Identity.Key()
	if id.Netns != "" {
		return nil, fault.Errorf(fault.Precondition, "the %s dispatcher cannot run on an interface in another network namespace yet: use type=tcx (or xdp on a kernel without freplace)", id.Hook)
	}
	unlock := l.lockKey(key)
	defer unlock()
	if p := l.join(key, owner); p != nil {
		return p, nil
	}
	ifc, err := l.iface(id.Interface)
	if err != nil {
		return nil, err
	}
	chain, err := l.chainFor(targetOf(id, ifc.Index))
	if err != nil {
		return nil, err
	}
	if m := chain.Mode(); id.Hook == HookXDP && m != "" && id.XDPMode != XDPModeAuto && id.XDPMode != m {
		return nil, fault.Errorf(fault.Precondition, "the XDP dispatcher on %q runs in %s mode; a program asking for xdpMode=%s cannot join it (use xdpMode=auto or %s)",
			id.Interface, m, id.XDPMode, m)
	}
	cs, err := collectionFor(id, r.spec)
	if err != nil {
		return nil, err
	}
	ext, err := dispatcher.LoadMember(dispatcher.Hook(id.Hook), cs, id.Program, nil)
	if err != nil {
		return nil, classifyLoadError(id, err)
	}
	failpoint.Hit("loader.loaded")
	e := &entry{id: id, key: key, prog: ext.Program, maps: ext.Maps, chain: chain, created: time.Now(), owners: map[string]struct{}{}}
	defer func() {
		if err != nil {
			e.destroy()
			l.removePins(key)
		}
	}()
	if err := e.readProgID(); err != nil {
		return nil, err
	}
	member := dispatcher.Member{Key: key, Name: id.Program, Program: e.prog, Priority: id.Priority, ProceedOn: proceedMask(id), Frags: ext.Frags, Created: e.created}
	if err := chain.Update([]dispatcher.Member{member}, nil); err != nil {
		return nil, l.chainError(id, err)
	}
	e.attached, e.mode = true, chain.Mode()
	failpoint.Hit("loader.attached")
	if err := l.pin(e); err != nil {
		chain.Update(nil, []string{key})
		return nil, err
	}
	failpoint.Hit("loader.pinned")
	p := l.insert(key, owner, e)
	klog.V(2).InfoS("Attached program to dispatcher", "key", key, "program", id.Program, "hook", id.Hook, "interface", id.Interface,
		"direction", id.Direction, "priority", id.Priority, "id", e.progID, "revision", chain.Revision())
	return p, nil
}

// chainError names the volumes holding a full chain's slots.
func (l *Loader) chainError(id Identity, err error) error {
	var ex *dispatcher.ExhaustedError
	if !errors.As(err, &ex) {
		return err
	}
	l.mu.Lock()
	var holders []string
	for _, k := range ex.Holders {
		if e := l.entries[k]; e != nil {
			for o := range e.owners {
				holders = append(holders, o)
			}
		}
	}
	l.mu.Unlock()
	sort.Strings(holders)
	if n := len(slices.DeleteFunc(slices.Clone(ex.Holders), func(k string) bool { return !dispatcher.IsLibxdpKey(k) })); n > 0 {
		holders = append(holders, fmt.Sprintf("and %d of libxdp's programs (`xdp-loader status %s`)", n, id.Interface))
	}
	where := fmt.Sprintf("XDP on %q", id.Interface)
	if id.Hook == HookTC {
		where = fmt.Sprintf("tc %s on %q", id.Direction, id.Interface)
	}
	return fault.Errorf(fault.Exhausted, "%s already runs %d programs, the dispatcher's limit; the slots are held by volumes %s: unpublish one of them or use another interface",
		where, dispatcher.Slots, strings.Join(holders, ", "))
}

// adoptChain finds a re-opened member's dispatcher and whether the member
// is still in it. A member whose interface went away keeps its maps and
// has no chain.
func (l *Loader) adoptChain(e *entry) error {
	ifc, err := net.InterfaceByName(e.id.Interface)
	if err != nil {
		return nil
	}
	chain, err := l.chainFor(targetOf(e.id, ifc.Index))
	if err != nil {
		return err
	}
	e.chain, e.mode = chain, chain.Mode()
	e.attached = slices.ContainsFunc(chain.Members(), func(m dispatcher.Member) bool { return m.Key == e.key })
	return nil
}

// pruneChains removes from every dispatcher the members no attachment owns
// (a publish that crashed after attaching) and empties dispatchers no
// attachment uses at all. Caller holds l.gc exclusively.
func (l *Loader) pruneChains() error {
	if !l.canChain {
		return nil
	}
	ents, err := os.ReadDir(filepath.Join(l.root, "dispatchers"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, de := range ents {
		t, ok := parsePinDirName(de.Name())
		if !ok {
			continue
		}
		chain, err := l.chainFor(t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var orphans []string
		l.mu.Lock()
		for _, m := range chain.Members() {
			if l.entries[m.Key] == nil {
				orphans = append(orphans, m.Key)
			}
		}
		l.mu.Unlock()
		if len(orphans) > 0 {
			klog.InfoS("Removing dispatcher members no volume owns", "dispatcher", de.Name(), "members", orphans)
			if err := chain.Update(nil, orphans); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// parsePinDirName reverses dispatcher.PinDirName ("4-xdp", "4-tc-ingress").
func parsePinDirName(name string) (dispatcher.Target, bool) {
	parts := strings.Split(name, "-")
	idx, err := strconv.Atoi(parts[0])
	if err != nil || idx <= 0 {
		return dispatcher.Target{}, false
	}
	ifname := strconv.Itoa(idx)
	if ifc, err := net.InterfaceByIndex(idx); err == nil {
		ifname = ifc.Name
	}
	switch {
	case len(parts) == 2 && parts[1] == string(dispatcher.XDP):
		return dispatcher.Target{Hook: dispatcher.XDP, Ifindex: idx, Interface: ifname}, true
	case len(parts) == 3 && parts[1] == string(dispatcher.TC) && (parts[2] == Ingress || parts[2] == Egress):
		return dispatcher.Target{Hook: dispatcher.TC, Ifindex: idx, Interface: ifname, Direction: parts[2]}, true
	}
	return dispatcher.Target{}, false
}

// ChainStat describes one dispatcher.
type ChainStat struct {
	Interface, Hook, Direction string
	Members                    int
	Revisions                  uint64 // revisions this process built
}

// Chains reports the open dispatchers.
func (l *Loader) Chains() []ChainStat {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []ChainStat
	for _, c := range l.chains {
		t := c.Target()
		out = append(out, ChainStat{Interface: t.Interface, Hook: string(t.Hook), Direction: t.Direction, Members: len(c.Members()), Revisions: c.Builds()})
	}
	return out
}
