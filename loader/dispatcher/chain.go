package dispatcher

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/internal/xdplink"
)

// Chain is the dispatcher of one attach point and the members it runs. It
// is safe for concurrent use; changes are serialized, and concurrent
// [Chain.Update] calls are coalesced into as few revisions as possible.
type Chain struct {
	target Target
	dir    string

	mu      sync.Mutex // serializes changes; guards the fields below
	cur     *revision  // the live revision; nil when the chain is empty
	lastRev uint64     // highest revision number in use under dir
	xdpLink link.Link  // XDP: the dispatcher's link, pinned at dir/link
	mode    string     // XDP: the mode the dispatcher is attached in
	closed  bool
	// libxdpDir, when set, receives each live revision in libxdp's pin
	// layout (see WithLibxdpPins).
	libxdpDir string
	// foreign is, in a chain shared with libxdp, the dispatcher attached
	// when it is not cur's (see shared.go).
	foreign *foreign
	// linked marks a chain with libxdp pins that a run without them left
	// attached with a bpf_link: it keeps the link until it empties.
	linked bool
	// nsGone marks a chain whose network namespace (Target.Netns) is gone:
	// its interface went with it, so nothing can be attached any more and
	// members only leave.
	nsGone bool
	builds atomic.Uint64

	// Revisions swapped out and not yet torn down (see retire).
	retiring sync.WaitGroup
	rmu      sync.Mutex
	retired  map[uint64]bool

	qmu   sync.Mutex
	queue []*change
}

// Open returns the chain of target whose pins live under dir. A chain
// pinned there before (by this process or an earlier one) is adopted: its
// live revision, found by the program ID that the interface's XDP link or
// tc filter runs, is re-opened with its members; revisions that never went
// live or were left behind by a crash are removed. Without pins the chain
// is empty and nothing is attached until the first change.
func Open(target Target, dir string, opts ...Option) (_ *Chain, err error) {
	if err := target.validate(); err != nil {
		return nil, err
	}
	c := &Chain{target: target, dir: dir}
	for _, o := range opts {
		o(c)
	}
	if target.Netns == "" {
		return c.open()
	}
	if c.libxdpDir != "" {
		return nil, fmt.Errorf("dispatcher: a chain in another network namespace cannot be shared with libxdp")
	}
	var out *Chain
	err = target.enter(func() (err error) {
		out, err = c.open()
		return err
	})
	if errors.Is(err, ErrNetnsGone) {
		c.nsGone = true
		return c.open()
	}
	return out, err
}

func (c *Chain) open() (_ *Chain, err error) {
	target, dir := c.target, c.dir
	if c.shared() {
		if _, err := os.Lstat(filepath.Join(dir, "link")); err != nil {
			return c.openShared()
		}
		c.linked = true
	}
	revs, err := listRevisions(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	var live ebpf.ProgramID
	switch target.Hook {
	case XDP:
		l, err := link.LoadPinnedLink(filepath.Join(dir, "link"), nil)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("opening the pinned XDP link of %s: %w", target.describe(), err)
		}
		if l != nil && target.Netns != "" && !c.nsGone && xdpDefunct(l) {
			// The chain's previous namespace went; its interface in this
			// one gets a dispatcher of its own at the next change.
			l.Unpin()
			l.Close()
			l = nil
		}
		if l != nil {
			c.xdpLink = l
			if info, err := l.Info(); err == nil {
				live = info.Program
			}
			if !c.nsGone {
				c.mode = xdplink.ModeOf(target.Ifindex)
			}
		}
	case TC:
		if c.nsGone {
			break // its filter went with the namespace
		}
		f, err := findFilter(target)
		if err != nil && fault.Of(err) != fault.Precondition {
			return nil, err
		}
		if f != nil {
			live = ebpf.ProgramID(f.Id)
		}
	}
	for _, n := range revs {
		c.lastRev = max(c.lastRev, n)
		if live == 0 || c.cur != nil {
			continue
		}
		rdir := filepath.Join(dir, revName(n))
		d, err := ebpf.LoadPinnedProgram(filepath.Join(rdir, "dispatcher"), nil)
		if err != nil {
			continue
		}
		if progID(d) != live {
			d.Close()
			continue
		}
		r, err := c.openRevision(n, rdir, d)
		if err != nil {
			return nil, fmt.Errorf("adopting revision %d of the dispatcher of %s: %w", n, target.describe(), err)
		}
		c.cur = r
	}
	if c.xdpLink == nil && target.Hook == XDP && c.libxdpDir == "" {
		if err := c.refuseNetlinkChain(); err != nil {
			return nil, err
		}
	}
	if c.cur == nil && (c.xdpLink == nil || c.interfaceGone()) {
		// Nothing of this chain runs (its interface went, or a crash came
		// before its first swap): an empty chain keeps no pins.
		if err := c.clear(); err != nil {
			return nil, err
		}
		return c, nil
	}
	c.removeStale()
	c.removeStaleLibxdp()
	return c, nil
}

// xdpDefunct reports whether an XDP link lost its interface.
func xdpDefunct(l link.Link) bool {
	info, err := l.Info()
	return err == nil && info.XDP() != nil && info.XDP().Ifindex == 0
}

// Retarget moves the chain to t, the same hook on an interface in another
// network namespace (a pod whose sandbox was replaced): a new revision
// with every member is attached there, and the dispatcher of the old
// namespace, if that still exists, is detached. With no members it only
// records t. On error the chain runs nowhere until its next change.
func (c *Chain) Retarget(t Target) error {
	if err := t.validate(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("dispatcher: the chain is closed")
	}
	if t.Hook != c.target.Hook || t.Direction != c.target.Direction || t.Netns == "" || c.target.Netns == "" {
		return fmt.Errorf("dispatcher: %s cannot move to %s in %q", c.target.describe(), t.describe(), t.Netns)
	}
	old := c.target
	switch {
	case c.xdpLink != nil:
		c.xdpLink.Unpin()
		c.xdpLink.Close() // detaches, if its namespace is still there
		c.xdpLink, c.mode = nil, ""
	case old.Hook == TC && c.cur != nil && !c.nsGone:
		d := c.cur.dispatcher
		_ = old.enter(func() error { return deleteFilter(old, d) }) // a namespace that went took it along
	}
	c.target, c.nsGone = t, false
	members := c.members()
	if len(members) == 0 {
		return nil
	}
	err := t.enter(func() error { return c.set(members) })
	if errors.Is(err, ErrNetnsGone) {
		c.nsGone = true
	}
	return err
}

func (c *Chain) openRevision(n uint64, dir string, d *ebpf.Program) (_ *revision, err error) {
	r := &revision{n: n, dir: dir, dispatcher: d}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	conf, err := ReadConfig(c.target.Hook, d)
	if err != nil {
		return nil, err
	}
	r.slots = make([]slot, len(conf.Slots))
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, de := range ents {
		i, m, ok := parseSlotPin(de.Name())
		if !ok {
			continue
		}
		if i >= len(r.slots) {
			return nil, fmt.Errorf("pin %s names slot %d but the dispatcher enables %d", de.Name(), i, len(r.slots))
		}
		l, err := link.LoadPinnedLink(filepath.Join(dir, de.Name()), nil)
		if err != nil {
			return nil, fmt.Errorf("opening pinned link %s: %w", de.Name(), err)
		}
		r.slots[i].link = l
		info, err := l.Info()
		if err != nil {
			return nil, fmt.Errorf("reading link %s: %w", de.Name(), err)
		}
		if m.Program, err = ebpf.NewProgramFromID(info.Program); err != nil {
			return nil, fmt.Errorf("opening the program of member %s: %w", m.Key, err)
		}
		sc := conf.Slots[i]
		m.Priority = int(sc.RunPrio)
		m.ProceedOn = sc.ChainCallActions
		m.Frags = sc.ProgramFlags&unix.BPF_F_XDP_HAS_FRAGS != 0
		r.slots[i].member = m
	}
	for i, s := range r.slots {
		if s.link == nil {
			return nil, fmt.Errorf("slot %d is enabled but has no pinned member link", i)
		}
	}
	return r, nil
}

// Target returns the chain's attach point (Retarget changes it).
func (c *Chain) Target() Target {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.target
}

// Dir returns the chain's pin directory.
func (c *Chain) Dir() string { return c.dir }

// Revision returns the number of the live revision (0 when the chain is
// empty). Numbers grow by one per revision built and survive Open.
func (c *Chain) Revision() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return 0
	}
	return c.cur.n
}

// Builds returns how many revisions this Chain value has built and swapped
// in (a metric: coalesced updates build fewer revisions than changes).
func (c *Chain) Builds() uint64 { return c.builds.Load() }

// Mode returns the XDP attach mode of the dispatcher ("native" or "skb"),
// or "" when nothing is attached or for tc.
func (c *Chain) Mode() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shared() {
		// libxdp may have attached the hook's dispatcher, in its mode.
		return xdplink.ModeOf(c.target.Ifindex)
	}
	return c.mode
}

// Members returns the members of the live revision in run order (slot
// order). Their Program descriptors belong to the chain and stay valid only
// until its next change or Close: Clone one to keep it. A chain shared
// with libxdp leaves libxdp's programs out.
func (c *Chain) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	ms := c.members()
	if c.shared() {
		ms = slices.DeleteFunc(ms, func(m Member) bool { return IsLibxdpKey(m.Key) })
	}
	return ms
}

func (c *Chain) members() []Member {
	if c.shared() {
		return c.sharedMembers()
	}
	if c.cur == nil {
		return nil
	}
	out := make([]Member, len(c.cur.slots))
	for i, s := range c.cur.slots {
		out[i] = s.member
	}
	return out
}

// Dispatcher returns the live revision's dispatcher program (nil when the
// chain is empty), for test runs and inspection. In a chain shared with
// libxdp it is the chain's last revision's, which libxdp may have
// replaced since with a dispatcher of its own. It belongs to the chain
// and stays valid only until its next change or Close.
func (c *Chain) Dispatcher() *ebpf.Program {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return nil
	}
	return c.cur.dispatcher
}

// Close releases the chain's descriptors. The pins stay, so the dispatcher
// and its members stay attached; Open adopts them again.
func (c *Chain) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.retiring.Wait()
	if c.cur != nil {
		c.cur.close()
		c.cur = nil
	}
	if c.xdpLink != nil {
		c.xdpLink.Close()
		c.xdpLink = nil
	}
	c.dropForeign()
	c.closed = true
	return nil
}
