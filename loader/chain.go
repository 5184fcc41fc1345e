package loader

import (
	"crypto/sha256"
	"encoding/hex"
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

	"github.com/cilium/ebpf"
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
	// A pod's own interface has a dispatcher of its own, joined at
	// AttachNetns (podChained), not at Acquire.
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
	ext, err := loadMember(id, r.spec)
	if err != nil {
		return nil, err
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
// attachment uses at all; pods' chains as prunePodChains says. Caller
// holds l.gc exclusively.
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
	var pods []string
	for _, de := range ents {
		if isPodChainDir(de.Name()) {
			pods = append(pods, de.Name())
			continue
		}
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
	errs = append(errs, l.prunePodChains(pods))
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
	// Pods' chains are reported together per hook, as interface "pod":
	// pods name their interfaces (no bounded label), and pods come and go.
	pods := map[string]*ChainStat{}
	podStat := func(key string, t dispatcher.Target) *ChainStat {
		if pods[key] == nil {
			pods[key] = &ChainStat{Interface: podInterfaceStat, Hook: string(t.Hook), Direction: t.Direction}
		}
		return pods[key]
	}
	for key, n := range l.podBuilds {
		hook, dir, _ := strings.Cut(key, "/")
		podStat(key, dispatcher.Target{Hook: dispatcher.Hook(hook), Direction: dir}).Revisions += n
	}
	for _, c := range l.chains {
		t := c.Target()
		if t.Netns != "" {
			s := podStat(podStatKey(t), t)
			s.Members += len(c.Members())
			s.Revisions += c.Builds()
			continue
		}
		out = append(out, ChainStat{Interface: t.Interface, Hook: string(t.Hook), Direction: t.Direction, Members: len(c.Members()), Revisions: c.Builds()})
	}
	for _, s := range pods {
		out = append(out, *s)
	}
	return out
}

// podInterfaceStat is the interface Chains reports pods' chains under.
const podInterfaceStat = "pod"

func podStatKey(t dispatcher.Target) string { return string(t.Hook) + "/" + t.Direction }

// A pod's own interface (a deferred identity on xdp or tc) runs through a
// dispatcher too where the kernel chains: the chain is keyed by the pod's
// UID, the interface's name, the hook and the direction, never by the
// namespace's path or the ifindex (an eth0 of index 2 is in every pod).
// Its members are loaded and pinned at publish and join the chain once the
// pod's sandbox has its namespace (AttachNetns); the chain's operations on
// the interface run in that namespace (dispatcher.Target.Netns). When the
// sandbox is replaced the chain follows: a new revision with every member
// is attached in the new namespace (Chain.Retarget).

// podChained reports whether a deferred id runs through its pod
// interface's dispatcher.
func (l *Loader) podChained(id Identity) bool {
	return l.canChain && id.Deferred() && id.Container == "" && (id.Hook == HookXDP || id.Hook == HookTC)
}

func tcNeedsFreplace() error {
	return fault.Errorf(fault.Precondition, "hook tc runs programs through the TC dispatcher, which needs freplace (BPF_PROG_TYPE_EXT), and this kernel rejects it; use type=tcx (Linux 6.6+)")
}

// podChainName names the pin directory of a pod interface's chain: a
// digest of the pod's UID and interface name (both bounded, neither a
// path), then the hook and direction. No host chain's name starts "pod-"
// (parsePinDirName skips them).
func podChainName(id Identity) string {
	sum := sha256.Sum256([]byte(id.Pod + "\x00" + id.Interface))
	name := "pod-" + hex.EncodeToString(sum[:12]) + "-" + string(id.Hook)
	if id.Hook == HookTC {
		name += "-" + id.Direction
	}
	return name
}

// memberFragsPin is a symbolic link in a pod member's pin directory whose
// target says whether it was loaded with BPF_F_XDP_HAS_FRAGS, which the
// kernel does not report and the dispatcher must match.
const memberFragsPin = "frags"

// acquirePodMember loads a pod interface's program as a dispatcher member
// and pins it with its status map; it joins the chain at AttachNetns.
func (l *Loader) acquirePodMember(r *Resolved, owner string) (*Program, error) {
	id, key := r.Identity, r.Identity.Key()
	unlockKey := l.lockKey(key)
	defer unlockKey()
	if p := l.join(key, owner); p != nil {
		return p, nil
	}
	if err := l.podSlotsFull(id); err != nil {
		return nil, err
	}
	ext, err := loadMember(id, r.spec)
	if err != nil {
		return nil, err
	}
	failpoint.Hit("loader.loaded")
	e := &entry{id: id, key: key, prog: ext.Program, maps: ext.Maps, created: time.Now(), owners: map[string]struct{}{}}
	unlock := l.lockTarget(id)
	defer unlock()
	if p := l.join(key, owner); p != nil {
		e.closeFDs()
		return p, nil
	}
	// Again under the target lock: concurrent publishes may have filled it.
	if err := l.podSlotsFull(id); err != nil {
		e.closeFDs()
		return nil, err
	}
	err = l.pinDeferred(e)
	if err == nil {
		err = os.Symlink(strconv.FormatBool(ext.Frags), filepath.Join(l.pinDir(key), memberFragsPin))
	}
	if err != nil {
		e.destroy()
		l.removePins(key)
		return nil, err
	}
	return l.insert(key, owner, e), nil
}

// podSlotsFull refuses, at publish, a program for a pod interface whose
// chain would have more members than the dispatcher's slots: every member
// joins it once the sandbox is there, so the count is known before.
func (l *Loader) podSlotsFull(id Identity) error {
	name := podChainName(id)
	n := 0
	var holders []string
	l.mu.Lock()
	for _, e := range l.entries {
		if l.podChained(e.id) && podChainName(e.id) == name {
			n++
			for o := range e.owners {
				holders = append(holders, o)
			}
		}
	}
	l.mu.Unlock()
	if n < dispatcher.Slots {
		return nil
	}
	sort.Strings(holders)
	where := fmt.Sprintf("XDP on the pod's %q", id.Interface)
	if id.Hook == HookTC {
		where = fmt.Sprintf("tc %s on the pod's %q", id.Direction, id.Interface)
	}
	return fault.Errorf(fault.Exhausted, "%s already runs %d programs, the dispatcher's limit; the slots are held by volumes %s: unpublish one of them or use another interface",
		where, dispatcher.Slots, strings.Join(holders, ", "))
}

// podMember is e as a member of its pod interface's chain.
func (l *Loader) podMember(e *entry) dispatcher.Member {
	frags, _ := os.Readlink(filepath.Join(l.pinDir(e.key), memberFragsPin))
	return dispatcher.Member{Key: e.key, Name: e.id.Program, Program: e.prog, Priority: e.id.Priority, ProceedOn: proceedMask(e.id),
		Frags: frags == "true", Created: e.created}
}

// podChainFor returns the chain of e's pod interface in the namespace at
// netns (inode ino) and the interface's index there, opening the chain
// from its pins on first use and moving it there when it is in another
// namespace (the pod's previous sandbox). Caller holds the target lock.
func (l *Loader) podChainFor(e *entry, netns string, ino uint64) (*dispatcher.Chain, error) {
	var idx int
	err := dispatcher.InNetns(netns, ino, func() (err error) {
		idx, err = ifindex(e.id.Interface)
		return err
	})
	if errors.Is(err, dispatcher.ErrNetnsGone) {
		return nil, err
	}
	if err != nil {
		return nil, fault.Errorf(fault.NotFound, "interface %q not found in the pod's network namespace %s", e.id.Interface, netns)
	}
	t := targetOf(e.id, idx)
	t.Netns, t.NetnsIno = netns, ino
	name := podChainName(e.id)
	l.mu.Lock()
	c := l.chains[name]
	l.mu.Unlock()
	if c == nil {
		c, err = dispatcher.Open(t, filepath.Join(l.root, "dispatchers", name))
		if err != nil {
			return nil, fmt.Errorf("opening the dispatcher of %s on the pod's %q: %w", t.Hook, t.Interface, err)
		}
		l.mu.Lock()
		l.chains[name] = c
		l.mu.Unlock()
	}
	if cur := c.Target(); cur.NetnsIno != ino || cur.Netns != netns || cur.Ifindex != idx {
		klog.InfoS("Moving a pod interface's dispatcher to the pod's new network namespace", "pod", e.id.Pod, "interface", e.id.Interface,
			"hook", e.id.Hook, "from", cur.Netns, "to", netns, "members", len(c.Members()))
		if err := c.Retarget(t); err != nil {
			return nil, l.chainError(e.id, err)
		}
	}
	return c, nil
}

// attachPodMember puts e in its pod interface's chain in the namespace at
// netns. Caller holds the target lock.
func (l *Loader) attachPodMember(e *entry, netns string, ino uint64) (*Program, error) {
	chain, err := l.podChainFor(e, netns, ino)
	if err != nil {
		return nil, err
	}
	if m := chain.Mode(); e.id.Hook == HookXDP && m != "" && e.id.XDPMode != XDPModeAuto && e.id.XDPMode != "" && e.id.XDPMode != m {
		return nil, fault.Errorf(fault.Precondition, "the XDP dispatcher on the pod's %q runs in %s mode; a program asking for xdpMode=%s cannot join it (use xdpMode=auto or %s)",
			e.id.Interface, m, e.id.XDPMode, m)
	}
	if !slices.ContainsFunc(chain.Members(), func(m dispatcher.Member) bool { return m.Key == e.key }) {
		if err := chain.Update([]dispatcher.Member{l.podMember(e)}, nil); err != nil {
			return nil, l.chainError(e.id, err)
		}
	}
	failpoint.Hit("podnet.joined")
	if err := writeNetnsPin(l.pinDir(e.key), netns, ino); err != nil {
		klog.ErrorS(err, "Recording the namespace of a pod's attachment; a restart attaches it again", "key", e.key)
	}
	l.mu.Lock()
	e.chain, e.netns, e.netnsIno, e.attached, e.mode = chain, netns, ino, true, chain.Mode()
	l.mu.Unlock()
	klog.V(2).InfoS("Attached program to a pod interface's dispatcher", "key", e.key, "program", e.id.Program, "hook", e.id.Hook,
		"interface", e.id.Interface, "pod", e.id.Pod, "netns", netns, "priority", e.id.Priority, "revision", chain.Revision())
	return l.snapshotOf(e), nil
}

// leavePodChain takes e out of its pod interface's chain (the pod's
// sandbox went, or the volume is released). Caller holds the target lock.
func (l *Loader) leavePodChain(e *entry) error {
	c := e.chain
	if c == nil {
		return nil
	}
	err := c.Update(nil, []string{e.key})
	_ = os.Remove(filepath.Join(l.pinDir(e.key), netnsPin))
	l.mu.Lock()
	e.chain, e.netns, e.netnsIno, e.attached = nil, "", 0, false
	l.mu.Unlock()
	l.forgetEmptyPodChain(e.id, c)
	return err
}

// forgetEmptyPodChain closes a pod interface's chain that has no members
// left: pods come and go, their chains must not pile up.
func (l *Loader) forgetEmptyPodChain(id Identity, c *dispatcher.Chain) {
	l.forgetPodChain(podChainName(id), c)
}

// forgetPodChain closes the pod interface's chain c, pinned under name,
// if it has no members left, keeping its revision count.
func (l *Loader) forgetPodChain(name string, c *dispatcher.Chain) {
	if len(c.Members()) > 0 {
		return
	}
	l.mu.Lock()
	if l.chains[name] == c {
		delete(l.chains, name)
		if l.podBuilds == nil {
			l.podBuilds = map[string]uint64{}
		}
		l.podBuilds[podStatKey(c.Target())] += c.Builds()
	}
	l.mu.Unlock()
	c.Close()
}

// openPodMember re-opens, after a restart, the chain a pod member was in,
// in the namespace recorded beside it. A namespace that went leaves it
// unattached: the waiter attaches it in the pod's current one.
func (l *Loader) openPodMember(e *entry, dir string) error {
	info, err := e.prog.Info()
	if err != nil {
		return fmt.Errorf("reading program info: %w", err)
	}
	e.progID, _ = info.ID()
	netns, ino := readNetnsPin(dir)
	if netns == "" {
		return nil
	}
	c, err := l.podChainFor(e, netns, ino)
	if err != nil {
		klog.InfoS("A pod's dispatcher is not where it was; its waiter attaches it again", "key", e.key, "netns", netns, "err", err)
		return nil
	}
	if slices.ContainsFunc(c.Members(), func(m dispatcher.Member) bool { return m.Key == e.key }) {
		e.chain, e.netns, e.netnsIno, e.attached, e.mode = c, netns, ino, true, c.Mode()
	}
	return nil
}

// loadMember loads id's program from spec as a dispatcher member (an
// freplace extension), its globals set.
func loadMember(id Identity, spec *ebpf.CollectionSpec) (*dispatcher.Extension, error) {
	cs, err := collectionFor(id, spec)
	if err != nil {
		return nil, err
	}
	ext, err := dispatcher.LoadMember(dispatcher.Hook(id.Hook), cs, id.Program, nil)
	if err != nil {
		return nil, classifyLoadError(id, err)
	}
	return ext, nil
}
