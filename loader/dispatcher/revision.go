package dispatcher

// Revisions: a change builds a new dispatcher with its members attached
// (loaded, attached, pinned), swaps it in atomically, and retires the old
// one after an RCU grace period. Pin names keep each member's order keys so
// that a restarted process can adopt the live revision.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/fault"
)

// revision is one dispatcher and its members' freplace links.
type revision struct {
	n          uint64
	dir        string
	dispatcher *ebpf.Program
	slots      []slot
}

type slot struct {
	member Member // Program is the revision's own descriptor
	link   link.Link
}

func (c *Chain) set(members []Member) error {
	if c.closed {
		return errors.New("dispatcher: the chain is closed")
	}
	if err := c.check(members); err != nil {
		return err
	}
	if c.shared() {
		return c.setShared(members)
	}
	if len(members) == 0 {
		return c.clear()
	}
	if c.cur != nil && c.interfaceGone() {
		c.dropSlots(members)
		return nil
	}
	if c.nsGone {
		return fault.Errorf(fault.Precondition, "%s cannot be attached: its network namespace %s is gone", c.target.describe(), c.target.Netns)
	}
	sorted := slices.Clone(members)
	slices.SortFunc(sorted, Compare)
	if c.cur == nil && c.target.Hook == TC {
		if err := c.checkFilterFree(); err != nil {
			return err
		}
	}
	rev, err := c.build(sorted)
	if err != nil {
		return err
	}
	if err := c.swap(rev); err != nil {
		c.destroyRev(rev)
		return err
	}
	c.install(rev)
	c.removeStale()
	return nil
}

// install makes rev, just swapped in, the chain's current revision and
// retires the one it replaced.
func (c *Chain) install(rev *revision) {
	failpoint.Hit("chain.swapped")
	old := c.cur
	c.cur = rev
	c.builds.Add(1)
	if old != nil {
		c.retire(old)
	}
}

// build loads a dispatcher for members and attaches each member to its
// slot, pinning everything under a new revision directory.
func (c *Chain) build(members []Member) (_ *revision, err error) {
	n := c.lastRev + 1
	dir := filepath.Join(c.dir, revName(n))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating pin directory %s: %w", dir, err)
	}
	c.lastRev = n
	r := &revision{n: n, dir: dir}
	defer func() {
		if err != nil {
			c.destroyRev(r)
		}
	}()
	if r.dispatcher, err = loadDispatcher(c.target.Hook, members); err != nil {
		return nil, err
	}
	failpoint.Hit("chain.loaded")
	for i, m := range members {
		prog, err := m.Program.Clone()
		if err != nil {
			return nil, fmt.Errorf("duplicating the program of member %q: %w", m.Key, err)
		}
		l, err := link.AttachFreplace(r.dispatcher, slotFunc(i), prog)
		if err != nil {
			prog.Close()
			return nil, fmt.Errorf("attaching program %q (member %s) to slot %d of the %s dispatcher: %w", m.Name, m.Key, i, c.target.describe(), err)
		}
		m.Program = prog
		r.slots = append(r.slots, slot{member: m, link: l})
		if err := l.Pin(filepath.Join(dir, slotPinName(i, m))); err != nil {
			return nil, fmt.Errorf("pinning the link of member %q: %w", m.Key, err)
		}
	}
	if err := r.dispatcher.Pin(filepath.Join(dir, "dispatcher")); err != nil {
		return nil, fmt.Errorf("pinning the dispatcher: %w", err)
	}
	if err := c.publishLibxdp(r); err != nil {
		return nil, err
	}
	failpoint.Hit("chain.attached")
	return r, nil
}

// swap makes r the revision the attach point runs, atomically.
func (c *Chain) swap(r *revision) error {
	if c.target.Hook == TC {
		return replaceFilter(c.target, r.dispatcher)
	}
	if c.xdpLink != nil {
		if err := c.xdpLink.Update(r.dispatcher); err != nil {
			return fmt.Errorf("swapping in revision %d of the dispatcher of %s: %w", r.n, c.target.describe(), err)
		}
		return nil
	}
	l, mode, err := attachXDP(c.target, r.dispatcher)
	if err != nil {
		return err
	}
	if err := l.Pin(filepath.Join(c.dir, "link")); err != nil {
		l.Close()
		return fmt.Errorf("pinning the XDP link of %s: %w", c.target.describe(), err)
	}
	c.xdpLink, c.mode = l, mode
	return nil
}

// interfaceGone reports whether the chain's interface was deleted: the
// kernel detached the dispatcher, and no revision can be swapped in.
func (c *Chain) interfaceGone() bool {
	if c.nsGone {
		return true
	}
	if c.xdpLink != nil {
		info, err := c.xdpLink.Info()
		if err == nil && info.XDP() != nil && info.XDP().Ifindex == 0 {
			return true
		}
	}
	_, err := netlink.LinkByIndex(c.target.Ifindex)
	return errors.As(err, &netlink.LinkNotFoundError{})
}

// dropSlots removes from the live revision, in place, the members not in
// keep: on a deleted interface nothing runs any more, and the members'
// pins go as their volumes leave, until the last one clears the chain.
func (c *Chain) dropSlots(keep []Member) {
	var slots []slot
	for _, s := range c.cur.slots {
		if slices.ContainsFunc(keep, func(m Member) bool { return m.Key == s.member.Key }) {
			slots = append(slots, s)
			continue
		}
		s.link.Unpin()
		s.link.Close()
		s.member.Program.Close()
	}
	c.cur.slots = slots
}

// clear detaches the dispatcher and removes every pin of the chain.
func (c *Chain) clear() error {
	var errs []error
	switch c.target.Hook {
	case XDP:
		if c.xdpLink != nil {
			if err := c.xdpLink.Unpin(); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("unpinning the XDP link of %s: %w", c.target.describe(), err))
			}
			c.xdpLink.Close() // the last reference: this detaches
			c.xdpLink, c.mode = nil, ""
			c.linked = false // the next dispatcher may be shared
		}
	case TC:
		if c.cur != nil && !c.nsGone {
			if err := deleteFilter(c.target, c.cur.dispatcher); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.cur != nil {
		waitForReaders()
		c.destroyRev(c.cur)
		c.cur = nil
	}
	c.retiring.Wait()
	c.removeStale()
	c.removeStaleLibxdp()
	if err := os.Remove(c.dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("removing %s: %w", c.dir, err))
	}
	return errors.Join(errs...)
}

// retire tears a swapped-out revision down in the background, once every
// packet that entered its dispatcher before the swap has left it (see
// waitForReaders): detaching a member earlier would let such a packet skip
// it. The caller does not wait for that grace period.
func (c *Chain) retire(r *revision) {
	c.rmu.Lock()
	if c.retired == nil {
		c.retired = map[uint64]bool{}
	}
	c.retired[r.n] = true
	c.rmu.Unlock()
	c.retiring.Add(1)
	go func() {
		defer c.retiring.Done()
		waitForReaders()
		failpoint.Hit("chain.retiring")
		c.destroyRev(r)
		c.rmu.Lock()
		delete(c.retired, r.n)
		c.rmu.Unlock()
	}()
}

// removeStale removes the pins of every revision but the live one and
// those being retired.
func (c *Chain) removeStale() {
	revs, _ := listRevisions(c.dir)
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for _, n := range revs {
		if c.cur != nil && n == c.cur.n || c.retired[n] {
			continue
		}
		os.RemoveAll(filepath.Join(c.dir, revName(n)))
	}
}

// close releases a revision's descriptors, leaving its pins.
func (r *revision) close() {
	for _, s := range r.slots {
		if s.link != nil {
			s.link.Close()
		}
		if s.member.Program != nil {
			s.member.Program.Close()
		}
	}
	if r.dispatcher != nil {
		r.dispatcher.Close()
	}
}

// destroyRev destroys r and withdraws its libxdp pins.
func (c *Chain) destroyRev(r *revision) {
	c.withdrawLibxdp(r)
	r.destroy()
}

// destroy detaches a revision that is not (or no longer) live and removes
// its pins.
func (r *revision) destroy() {
	for _, s := range r.slots {
		if s.link != nil {
			s.link.Unpin()
		}
	}
	if r.dispatcher != nil {
		r.dispatcher.Unpin()
	}
	r.close()
	os.RemoveAll(r.dir)
}

func revName(n uint64) string { return "rev-" + strconv.FormatUint(n, 10) }

func slotFunc(i int) string { return "prog" + strconv.Itoa(i) }

// slotPinName encodes a member's order keys in its link's pin name:
// slot-<i>_<key>_<created unix ns>_<name>. (bpffs refuses dots in names.)
func slotPinName(i int, m Member) string {
	var ns int64
	if !m.Created.IsZero() {
		ns = m.Created.UnixNano()
	}
	return fmt.Sprintf("slot-%d_%s_%d_%s", i, m.Key, ns, m.Name)
}

func parseSlotPin(name string) (int, Member, bool) {
	rest, ok := strings.CutPrefix(name, "slot-")
	if !ok {
		return 0, Member{}, false
	}
	parts := strings.SplitN(rest, "_", 4)
	if len(parts) != 4 {
		return 0, Member{}, false
	}
	i, err1 := strconv.Atoi(parts[0])
	ns, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || i < 0 || i >= Slots {
		return 0, Member{}, false
	}
	m := Member{Key: parts[1], Name: parts[3]}
	if ns != 0 {
		m.Created = time.Unix(0, ns)
	}
	return i, m, true
}

// listRevisions returns the revision numbers pinned under dir, ascending.
func listRevisions(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, de := range ents {
		s, ok := strings.CutPrefix(de.Name(), "rev-")
		if !ok || !de.IsDir() {
			continue
		}
		if n, err := strconv.ParseUint(s, 10, 64); err == nil {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

func progID(p *ebpf.Program) ebpf.ProgramID {
	info, err := p.Info()
	if err != nil {
		return 0
	}
	id, _ := info.ID()
	return id
}
