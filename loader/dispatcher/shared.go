package dispatcher

// Sharing one interface's XDP chain with libxdp (a chain opened with
// WithLibxdpPins). libxdp attaches its dispatchers through netlink and
// swaps them with XDP_FLAGS_REPLACE under an exclusive flock on its pin
// directory; it reads the members of the attached dispatcher from
// <dir>/dispatch-IFINDEX-PROGID/prog<N>-prog and that dispatcher's
// configuration, builds a dispatcher of its own with the new set and swaps
// it in. A shared chain does the same, so that both loaders follow each
// other's swaps:
//
//   - its dispatcher is attached through netlink, not with a bpf_link (the
//     kernel refuses a netlink replace of a program a link holds), which
//     also means it outlives the daemon's bpffs and must be detached
//     explicitly;
//   - every change holds libxdp's flock from the rebase to the swap, and
//     begins with a rebase onto whatever dispatcher is attached now: when
//     libxdp swapped in its own, libxdp's programs are read from its pins
//     and become members of the next revision (keyed "libxdp-<program
//     id>", counted against the slots, at their priorities), while
//     bpfmount's own members are told from them by program ID and always
//     come from bpfmount's last revision;
//   - each revision is published in libxdp's layout (publishLibxdp), and
//     the pins of the dispatcher a swap replaced are removed, as libxdp does;
//   - when the last of bpfmount's members goes and libxdp's remain, the
//     chain hands a dispatcher running only libxdp's programs over to
//     libxdp (its pins in libxdp's layout keep it) and drops its own pins.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/internal/xdplink"
)

// libxdpKeyPrefix starts the keys of libxdp's programs in a shared chain
// (the loader's keys are hex digests, so the two never meet).
const libxdpKeyPrefix = "libxdp-"

// IsLibxdpKey reports whether a member key names one of libxdp's programs
// taken into a shared chain.
func IsLibxdpKey(key string) bool { return strings.HasPrefix(key, libxdpKeyPrefix) }

// shared reports whether the chain shares its interface's XDP hook with
// libxdp.
func (c *Chain) shared() bool { return c.libxdpDir != "" && c.target.Hook == XDP && !c.linked }

// foreign is the dispatcher attached to a shared chain's interface when it
// is not the chain's live revision: libxdp swapped in one of its own, or
// detached the chain's.
type foreign struct {
	dispatcher *ebpf.Program // nil when nothing is attached
	members    []Member      // libxdp's programs, with descriptors of their own
	links      []link.Link   // their links, held until frames in flight are gone
	present    map[ebpf.ProgramID]bool
}

func (f *foreign) close() {
	for _, m := range f.members {
		m.Program.Close()
	}
	for _, l := range f.links {
		l.Close()
	}
	if f.dispatcher != nil {
		f.dispatcher.Close()
	}
}

func (c *Chain) dropForeign() {
	if c.foreign != nil {
		c.foreign.close()
		c.foreign = nil
	}
}

// libxdpDirOf is libxdp's pin directory of dispatcher id on the chain's
// interface.
func (c *Chain) libxdpDirOf(id ebpf.ProgramID) string {
	return filepath.Join(c.libxdpDir, fmt.Sprintf("dispatch-%d-%d", c.target.Ifindex, id))
}

// flockLibxdp takes libxdp's lock: an exclusive flock on its directory.
func (c *Chain) flockLibxdp() (func(), error) {
	if err := os.MkdirAll(c.libxdpDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating libxdp's directory %s: %w", c.libxdpDir, err)
	}
	fd, err := unix.Open(c.libxdpDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening libxdp's directory %s: %w", c.libxdpDir, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("taking libxdp's lock on %s: %w", c.libxdpDir, err)
	}
	return func() { unix.Flock(fd, unix.LOCK_UN); unix.Close(fd) }, nil
}

// beginShared starts a change of a shared chain: it takes libxdp's lock,
// which the caller holds until the change is live, and rebases the chain
// onto the dispatcher attached now. Caller holds c.mu.
func (c *Chain) beginShared() (func(), error) {
	unlock, err := c.flockLibxdp()
	if err != nil {
		return nil, err
	}
	if err := c.rebase(); err != nil {
		unlock()
		return nil, err
	}
	return unlock, nil
}

// rebase finds the dispatcher attached to the interface and, when it is
// not the live revision's, reads libxdp's programs from its pins into
// c.foreign. Caller holds c.mu and libxdp's lock.
func (c *Chain) rebase() error {
	c.dropForeign()
	live := ebpf.ProgramID(xdplink.Owner(c.target.Ifindex))
	if live != 0 {
		c.mode = xdplink.ModeOf(c.target.Ifindex)
	}
	switch {
	case c.cur != nil && live == progID(c.cur.dispatcher):
		return nil
	case live == 0:
		if c.cur != nil {
			// Detached (xdp-loader unload --all, ip link set xdp off):
			// libxdp's programs went with it; bpfmount's come back at the
			// next change.
			c.foreign = &foreign{}
		}
		return nil
	}
	f, err := c.readForeign(live)
	if err != nil {
		return err
	}
	c.foreign = f
	return nil
}

// readForeign reads the chain of dispatcher live from libxdp's pins:
// libxdp's programs as members, bpfmount's own (known by program ID) as
// present.
func (c *Chain) readForeign(live ebpf.ProgramID) (_ *foreign, err error) {
	d, err := ebpf.NewProgramFromID(live)
	if err != nil {
		return nil, fmt.Errorf("opening the XDP program (id %d) attached to %q: %w", live, c.target.Interface, err)
	}
	f := &foreign{dispatcher: d, present: map[ebpf.ProgramID]bool{}}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	info, err := d.Info()
	if err != nil {
		return nil, fmt.Errorf("reading the XDP program (id %d) attached to %q: %w", live, c.target.Interface, err)
	}
	dir := c.libxdpDirOf(live)
	if info.Name != xdplink.DispatcherName {
		return nil, fault.Errorf(fault.Precondition, "interface %q has an XDP program (%q, id %d) that is not a dispatcher: bpfmount shares an interface only with libxdp's dispatcher; remove that program or use another interface",
			c.target.Interface, info.Name, live)
	}
	conf, err := ReadConfig(XDP, d)
	if err != nil {
		return nil, fault.Errorf(fault.Precondition, "interface %q has an XDP dispatcher (id %d) whose configuration bpfmount cannot read (%v): only libxdp's dispatchers of configuration version %d can be shared; remove it or use another interface",
			c.target.Interface, live, err, xdpConfigVersion)
	}
	ours := map[ebpf.ProgramID]bool{}
	if c.cur != nil {
		for _, s := range c.cur.slots {
			if !IsLibxdpKey(s.member.Key) {
				ours[progID(s.member.Program)] = true
			}
		}
	}
	for i, sc := range conf.Slots {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(dir, fmt.Sprintf("prog%d-prog", i)), nil)
		if err != nil {
			return nil, fault.Errorf(fault.Precondition, "interface %q has an XDP dispatcher (id %d) without libxdp's pin of its program %d in %s (%v): it was not attached by libxdp, or libxdp uses another directory than --libxdp-dir; remove it or use another interface",
				c.target.Interface, live, i, dir, err)
		}
		id := progID(p)
		if ours[id] {
			f.present[id] = true
			p.Close()
			continue
		}
		if p.Type() != ebpf.Extension {
			p.Close()
			return nil, fault.Errorf(fault.Precondition, "program %d of the XDP dispatcher on %q (id %d) is a %s program, not an extension", i, c.target.Interface, id, p.Type())
		}
		name := ""
		if pi, err := p.Info(); err == nil {
			name = programName(pi.Name)
		}
		f.members = append(f.members, Member{
			Key: fmt.Sprintf("%s%d", libxdpKeyPrefix, id), Name: name, Program: p,
			Priority: int(sc.RunPrio), ProceedOn: sc.ChainCallActions,
			Frags: sc.ProgramFlags&unix.BPF_F_XDP_HAS_FRAGS != 0,
		})
		if l, err := link.LoadPinnedLink(filepath.Join(dir, fmt.Sprintf("prog%d-link", i)), nil); err == nil {
			f.links = append(f.links, l)
		}
	}
	return f, nil
}

// programName keeps the characters of a kernel program name that a
// member's name (and so a pin name) allows.
func programName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '_'
	}, s)
}

// sharedMembers is members() of a shared chain: bpfmount's own from the
// last revision, and libxdp's from the attached dispatcher when that is
// not the last revision's, in run order.
func (c *Chain) sharedMembers() []Member {
	var out []Member
	if c.cur != nil {
		for _, s := range c.cur.slots {
			if c.foreign == nil || !IsLibxdpKey(s.member.Key) {
				out = append(out, s.member)
			}
		}
	}
	if c.foreign != nil {
		out = append(out, c.foreign.members...)
	}
	slices.SortStableFunc(out, Compare)
	return out
}

// liveDispatcher is the dispatcher attached now, as the last rebase found
// it: the one a swap expects to replace (nil: none).
func (c *Chain) liveDispatcher() *ebpf.Program {
	if c.foreign != nil {
		return c.foreign.dispatcher
	}
	if c.cur != nil {
		return c.cur.dispatcher
	}
	return nil
}

// setShared is set for a shared chain. Caller holds c.mu and libxdp's
// lock, and rebased the chain.
func (c *Chain) setShared(members []Member) error {
	if len(members) == 0 {
		return c.detachShared()
	}
	if c.cur != nil && c.interfaceGone() {
		c.dropSlots(members)
		return nil
	}
	if err := os.MkdirAll(filepath.Join(c.dir, netlinkMarker), 0o700); err != nil {
		return fmt.Errorf("creating pin directory %s: %w", c.dir, err)
	}
	sorted := slices.Clone(members)
	slices.SortFunc(sorted, Compare)
	rev, err := c.build(sorted)
	if err != nil {
		c.leaveNothing()
		return err
	}
	if err := c.swapShared(rev); err != nil {
		c.destroyRev(rev)
		c.leaveNothing()
		return err
	}
	c.install(rev)
	c.retireForeign()
	if !slices.ContainsFunc(sorted, func(m Member) bool { return !IsLibxdpKey(m.Key) }) {
		return c.handOver()
	}
	c.removeStale()
	return nil
}

// leaveNothing removes the pin directory of a chain whose first change
// failed: a refused publish leaves no pin behind.
func (c *Chain) leaveNothing() {
	if c.cur == nil {
		c.clearShared()
	}
}

// swapShared attaches r's dispatcher through netlink in place of the one
// attached now, atomically.
func (c *Chain) swapShared(r *revision) error {
	expected := c.liveDispatcher()
	var err error
	if expected == nil {
		var mode string
		mode, err = xdplink.AttachNetlink(r.dispatcher, c.target.Ifindex, c.target.XDPMode)
		if err == nil {
			c.mode = mode
			return nil
		}
		if errors.Is(err, unix.EOPNOTSUPP) || mode == XDPModeNative && errors.Is(err, unix.EINVAL) {
			return fault.Errorf(fault.Precondition, "interface %q does not support %s XDP: %w", c.target.Interface, mode, err)
		}
	} else {
		err = xdplink.Replace(c.target.Ifindex, r.dispatcher, expected, c.replaceMode())
		if err == nil {
			return nil
		}
	}
	return c.netlinkError("swapping in revision "+fmt.Sprint(r.n)+" of the dispatcher of", err)
}

// replaceMode is the mode of the attached dispatcher, which a replace must
// name.
func (c *Chain) replaceMode() string {
	if m := xdplink.ModeOf(c.target.Ifindex); m != "" {
		return m
	}
	if c.mode != "" {
		return c.mode
	}
	return XDPModeNative
}

func (c *Chain) netlinkError(what string, err error) error {
	switch {
	case errors.Is(err, unix.EBUSY):
		id := xdplink.Owner(c.target.Ifindex)
		return fault.Errorf(fault.Precondition, "interface %q runs an XDP program (id %d) held by a bpf_link, which libxdp and bpfmount in libxdp mode cannot replace (another loader's, or bpfmount's own from a run without --libxdp-dir): detach it or use another interface: %w",
			c.target.Interface, id, err)
	case errors.Is(err, unix.EEXIST):
		return fault.Errorf(fault.Aborted, "the XDP program on %q changed while bpfmount changed its chain (a loader that does not take libxdp's lock on %s?); retry: %w", c.target.Interface, c.libxdpDir, err)
	}
	return fmt.Errorf("%s %s through netlink: %w", what, c.target.describe(), err)
}

// retireForeign removes libxdp's pins of the dispatcher a swap or a detach
// replaced, as libxdp does, and closes what the chain held of it once the
// frames in flight in it are gone.
func (c *Chain) retireForeign() {
	f := c.foreign
	c.foreign = nil
	if f == nil {
		return
	}
	if f.dispatcher != nil {
		os.RemoveAll(c.libxdpDirOf(progID(f.dispatcher)))
	}
	c.retiring.Add(1)
	go func() {
		defer c.retiring.Done()
		waitForReaders()
		f.close()
	}()
}

// handOver leaves the live revision, which runs only libxdp's programs, to
// libxdp: the dispatcher stays attached and its members' links stay pinned
// in libxdp's layout, and the chain's own pins go.
//
// Crash-safe order: the revisions it replaced go first (a crash then
// leaves r whole, and a restart hands it over again); then r's dispatcher
// pin, after which no restart takes r for the chain's (a crash then
// leaves pins that the restart clears).
func (c *Chain) handOver() error {
	c.retiring.Wait()
	r := c.cur
	c.cur = nil
	r.dispatcher.Unpin()
	for _, s := range r.slots {
		s.link.Unpin() // the chain's own pin; libxdp's stays
	}
	r.close()
	os.RemoveAll(r.dir)
	c.removeStale()
	c.removeStaleLibxdp() // the replaced dispatcher's, which a crash may have left
	os.Remove(filepath.Join(c.dir, netlinkMarker))
	if err := os.Remove(c.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", c.dir, err)
	}
	return nil
}

// detachShared detaches the attached dispatcher when no member is left,
// and removes the chain's pins. A netlink attach outlives every
// descriptor and pin, so it is detached explicitly.
func (c *Chain) detachShared() error {
	if d := c.liveDispatcher(); d != nil {
		if err := xdplink.Replace(c.target.Ifindex, nil, d, c.replaceMode()); err != nil && !c.interfaceGone() {
			return c.netlinkError("detaching the dispatcher of", err)
		}
	}
	c.mode = ""
	c.retireForeign()
	return c.clearShared()
}

// openShared is Open for a shared chain: it adopts the revision that is
// attached, or else the newest whole one, as the record of bpfmount's
// members (libxdp may have swapped in a dispatcher of its own that runs
// them), and rebases onto the attached dispatcher. When the attached one
// lacks some of bpfmount's members (a crash between detaching and
// re-attaching, or libxdp took them out), a revision with them all is
// swapped in.
func (c *Chain) openShared() (_ *Chain, err error) {
	revs, err := listRevisions(c.dir)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	unlock, err := c.flockLibxdp()
	if err != nil {
		return nil, err
	}
	defer unlock()
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	live := ebpf.ProgramID(xdplink.Owner(c.target.Ifindex))
	for _, n := range revs {
		c.lastRev = max(c.lastRev, n)
	}
	open := func(n uint64, wantLive bool) (*revision, error) {
		rdir := filepath.Join(c.dir, revName(n))
		d, err := ebpf.LoadPinnedProgram(filepath.Join(rdir, "dispatcher"), nil)
		if err != nil {
			return nil, nil
		}
		if wantLive && progID(d) != live {
			d.Close()
			return nil, nil
		}
		r, err := c.openRevision(n, rdir, d)
		if err != nil && wantLive {
			return nil, fmt.Errorf("adopting revision %d of the dispatcher of %s: %w", n, c.target.describe(), err)
		}
		return r, nil
	}
	for i := len(revs) - 1; i >= 0 && c.cur == nil && live != 0; i-- {
		if c.cur, err = open(revs[i], true); err != nil {
			return nil, err
		}
	}
	for i := len(revs) - 1; i >= 0 && c.cur == nil; i-- {
		c.cur, _ = open(revs[i], false)
	}
	if c.cur == nil {
		// No revision of this chain was ever whole: nothing of it runs.
		return c, c.clearShared()
	}
	rebased := c.rebase() == nil
	if !rebased {
		// The attached program is none libxdp could share; the next
		// change says so. Until then none of the members runs.
		c.foreign = &foreign{}
	}
	own := slices.ContainsFunc(c.members(), func(m Member) bool { return !IsLibxdpKey(m.Key) })
	switch {
	case !own && c.foreign == nil:
		// A crash came between handing the chain over to libxdp and
		// dropping the chain's pins.
		return c, c.handOver()
	case !own:
		c.dropForeign()
		return c, c.clearShared()
	case rebased && c.foreign != nil && !c.interfaceGone() && c.missingOwn():
		if err := c.setShared(c.members()); err != nil {
			return nil, fmt.Errorf("re-attaching bpfmount's members to the XDP dispatcher on %q: %w", c.target.Interface, err)
		}
	}
	c.removeStale()
	c.removeStaleLibxdp()
	return c, nil
}

// missingOwn reports whether the attached dispatcher lacks one of the
// chain's own members.
func (c *Chain) missingOwn() bool {
	if c.foreign == nil {
		return false
	}
	if c.foreign.dispatcher == nil {
		return true
	}
	for _, s := range c.cur.slots {
		if !IsLibxdpKey(s.member.Key) && !c.foreign.present[progID(s.member.Program)] {
			return true
		}
	}
	return false
}

// netlinkMarker is a directory in a shared chain's pin directory: the
// chain is attached through netlink. (bpffs holds no regular files.)
const netlinkMarker = "netlink"

// refuseNetlinkChain fails for a shared chain, left by a run with libxdp
// pins: a chain without them cannot change it (a bpf_link over a netlink
// attach is refused) and must not clear it (its dispatcher, or libxdp's
// running its members, would stay attached).
func (c *Chain) refuseNetlinkChain() error {
	if _, err := os.Lstat(filepath.Join(c.dir, netlinkMarker)); err != nil {
		return nil
	}
	return fault.Errorf(fault.Precondition, "the XDP chain on %q is shared with libxdp (attached through netlink by bpfmount with --libxdp-dir): start bpfmount with --libxdp-dir again, and unpublish the interface's XDP volumes before turning it off", c.target.Interface)
}

// clearShared clears a shared chain's pins, its marker too.
func (c *Chain) clearShared() error {
	os.Remove(filepath.Join(c.dir, netlinkMarker))
	return c.clear()
}
