package dispatcher

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
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
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
	builds  atomic.Uint64

	// Revisions swapped out and not yet torn down (see retire).
	retiring sync.WaitGroup
	rmu      sync.Mutex
	retired  map[uint64]bool

	qmu   sync.Mutex
	queue []*change
}

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

// Open returns the chain of target whose pins live under dir. A chain
// pinned there before (by this process or an earlier one) is adopted: its
// live revision, found by the program ID that the interface's XDP link or
// tc filter runs, is re-opened with its members; revisions that never went
// live or were left behind by a crash are removed. Without pins the chain
// is empty and nothing is attached until the first change.
func Open(target Target, dir string) (_ *Chain, err error) {
	if err := target.validate(); err != nil {
		return nil, err
	}
	c := &Chain{target: target, dir: dir}
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
		if l != nil {
			c.xdpLink = l
			if info, err := l.Info(); err == nil {
				live = info.Program
			}
			c.mode = xdpModeOf(target.Ifindex)
		}
	case TC:
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
	c.removeStale()
	return c, nil
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

// Target returns the chain's attach point.
func (c *Chain) Target() Target { return c.target }

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
	return c.mode
}

// Members returns the members of the live revision in run order (slot
// order). Their Program descriptors belong to the chain and stay valid only
// until its next change or Close: Clone one to keep it.
func (c *Chain) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members()
}

func (c *Chain) members() []Member {
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
// chain is empty), for test runs and inspection. It belongs to the chain
// and stays valid only until its next change or Close.
func (c *Chain) Dispatcher() *ebpf.Program {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return nil
	}
	return c.cur.dispatcher
}

// Set replaces the chain's members with members (in any order; the chain
// runs them in Compare order) in one new revision. It returns once the new
// revision is live; the old one is torn down in the background after an
// RCU grace period (Wait waits for that). An empty set detaches the
// dispatcher and removes the chain's pins. On error the live revision is
// untouched. More than Slots members is a fault.Exhausted error wrapping
// an *ExhaustedError.
func (c *Chain) Set(members []Member) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.set(members)
}

// Apply removes the members with the given keys, adds (or replaces, by key)
// the given members, and builds one revision for the lot. Removing an
// absent key is not an error; a change that leaves the member set as it is
// builds nothing.
func (c *Chain) Apply(add []Member, remove []string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	next, changed := merge(c.members(), add, remove)
	if !changed {
		return nil
	}
	return c.set(next)
}

// Update is Apply for concurrent callers: changes that arrive while a
// revision is being built are gathered and applied together in one
// revision, so N concurrent updates build far fewer than N revisions. Each
// caller gets its own change's outcome: a change that would overflow the
// slots fails with fault.Exhausted while the others go in, and when a
// combined build fails, the changes are retried one by one so that each
// error lands on the change that caused it.
func (c *Chain) Update(add []Member, remove []string) error {
	ch := &change{add: add, remove: remove, done: make(chan error, 1)}
	c.qmu.Lock()
	c.queue = append(c.queue, ch)
	c.qmu.Unlock()

	c.mu.Lock()
	c.qmu.Lock()
	batch := c.queue
	c.queue = nil
	c.qmu.Unlock()
	if len(batch) > 0 {
		c.applyBatch(batch)
	}
	c.mu.Unlock()
	return <-ch.done
}

type change struct {
	add    []Member
	remove []string
	done   chan error
}

func (c *Chain) applyBatch(batch []*change) {
	cur := c.members()
	set := cur
	var accepted []*change
	for _, ch := range batch {
		next, changed := merge(set, ch.add, ch.remove)
		if !changed {
			ch.done <- nil
			continue
		}
		if err := c.check(next); err != nil {
			ch.done <- err
			continue
		}
		set = next
		accepted = append(accepted, ch)
	}
	if len(accepted) == 0 {
		return
	}
	err := c.set(set)
	if err == nil || len(accepted) == 1 {
		for _, ch := range accepted {
			ch.done <- err
		}
		return
	}
	for _, ch := range accepted {
		next, changed := merge(c.members(), ch.add, ch.remove)
		if !changed {
			ch.done <- nil
			continue
		}
		ch.done <- c.set(next)
	}
}

// merge returns cur less remove plus add (replacing by key), and whether
// that differs from cur.
func merge(cur, add []Member, remove []string) ([]Member, bool) {
	changed := len(add) > 0
	out := make([]Member, 0, len(cur)+len(add))
	for _, m := range cur {
		if slices.Contains(remove, m.Key) {
			changed = true
			continue
		}
		if slices.ContainsFunc(add, func(a Member) bool { return a.Key == m.Key }) {
			continue
		}
		out = append(out, m)
	}
	return append(out, add...), changed
}

// check validates a member set before anything is built.
func (c *Chain) check(members []Member) error {
	if len(members) > Slots {
		e := &ExhaustedError{Target: c.target}
		live := map[string]bool{}
		for _, m := range c.members() {
			e.Holders = append(e.Holders, m.Key)
			live[m.Key] = true
		}
		sorted := slices.Clone(members)
		slices.SortFunc(sorted, Compare)
		for _, m := range sorted {
			switch {
			case live[m.Key]:
			case len(live) == 0 && len(e.Holders) < Slots:
				e.Holders = append(e.Holders, m.Key)
			default:
				e.Refused = append(e.Refused, m.Key)
			}
		}
		return fault.Errorf(fault.Exhausted, "%w", e)
	}
	seen := map[string]bool{}
	for _, m := range members {
		if err := checkMember(m.Key, m.Name); err != nil {
			return err
		}
		if seen[m.Key] {
			return fmt.Errorf("dispatcher: member key %q appears twice", m.Key)
		}
		seen[m.Key] = true
		if m.Program == nil {
			return fmt.Errorf("dispatcher: member %q has no program", m.Key)
		}
		if m.Program.Type() != ebpf.Extension {
			return fmt.Errorf("dispatcher: member %q is a %s program, not an extension (load it with LoadMember)", m.Key, m.Program.Type())
		}
		if m.Priority < 0 {
			return fmt.Errorf("dispatcher: member %q has a negative priority", m.Key)
		}
		if c.target.Hook == TC && m.Frags {
			return fmt.Errorf("dispatcher: member %q claims XDP frags support on a tc hook", m.Key)
		}
	}
	return nil
}

func (c *Chain) set(members []Member) error {
	if c.closed {
		return errors.New("dispatcher: the chain is closed")
	}
	if err := c.check(members); err != nil {
		return err
	}
	if len(members) == 0 {
		return c.clear()
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
		rev.destroy()
		return err
	}
	old := c.cur
	c.cur = rev
	c.builds.Add(1)
	if old != nil {
		c.retire(old)
	}
	c.removeStale()
	return nil
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
			r.destroy()
		}
	}()
	if r.dispatcher, err = loadDispatcher(c.target.Hook, members); err != nil {
		return nil, err
	}
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
		}
	case TC:
		if c.cur != nil {
			if err := deleteFilter(c.target, c.cur.dispatcher); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.cur != nil {
		waitForReaders()
		c.cur.destroy()
		c.cur = nil
	}
	c.retiring.Wait()
	c.removeStale()
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
		r.destroy()
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

// Wait returns once the revisions this chain swapped out are torn down
// (pins removed, members detached from them).
func (c *Chain) Wait() { c.retiring.Wait() }

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
	c.closed = true
	return nil
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
