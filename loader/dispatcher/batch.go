package dispatcher

// Batching: concurrent changes to one chain are gathered and applied in as
// few revisions as possible, each caller getting its own change's outcome.

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// Update removes the members with the given keys and adds (or replaces, by
// key) the given members, in one new revision in which they run in Compare
// order. It returns once that revision is live; the old one is torn down
// in the background after an RCU grace period. Removing every member
// detaches the dispatcher and removes the chain's pins (in a chain shared
// with libxdp, where libxdp's programs remain, a dispatcher running them
// stays, left to libxdp); removing an absent
// key is not an error, and a change that leaves the member set as it is
// builds nothing. On error the live revision is untouched; more than Slots
// members is a fault.Exhausted error wrapping an *ExhaustedError.
//
// Changes that arrive while a revision is being built are gathered and
// applied together in one revision, so N concurrent updates build far
// fewer than N revisions. Each
// caller gets its own change's outcome: a change that would overflow the
// slots fails with fault.Exhausted while the others go in, and when a
// combined build fails, the changes are retried one by one so that each
// error lands on the change that caused it.
func (c *Chain) Update(add []Member, remove []string) error {
	return c.submit(&change{add: add, remove: remove, done: make(chan error, 1)})
}

// Replace puts m in the slot of the member whose key is old, in one new
// revision swapped in like any other: a packet runs the revision with old
// or the one with m, never neither and never both. m must have old's
// priority and program name; it takes old's creation time, so it sorts
// (Compare) exactly where old did, now and in every later revision; its
// own chain-call mask and frags flag apply. Replacing a key the chain does
// not hold is a fault.NotFound error; like Update, the call is coalesced
// with concurrent changes.
func (c *Chain) Replace(old string, m Member) error {
	return c.submit(&change{add: []Member{m}, remove: []string{old}, replaces: old, done: make(chan error, 1)})
}

func (c *Chain) submit(ch *change) error {
	c.qmu.Lock()
	c.queue = append(c.queue, ch)
	c.qmu.Unlock()

	c.mu.Lock()
	c.qmu.Lock()
	batch := c.queue
	c.queue = nil
	c.qmu.Unlock()
	if len(batch) > 0 {
		c.applyIn(batch)
	}
	c.mu.Unlock()
	return <-ch.done
}

// applyIn applies a batch in the chain's network namespace. A namespace
// that is gone took the interface along: the batch is applied without it
// (members leave; none can join).
func (c *Chain) applyIn(batch []*change) {
	if c.target.Netns == "" || c.nsGone {
		c.applyBatch(batch)
		return
	}
	ran := false
	err := c.target.enter(func() error {
		ran = true
		c.applyBatch(batch)
		return nil
	})
	switch {
	case ran:
	case errors.Is(err, ErrNetnsGone):
		c.nsGone = true
		c.applyBatch(batch)
	default:
		for _, ch := range batch {
			ch.done <- err
		}
	}
}

type change struct {
	add    []Member
	remove []string
	// replaces is the key of the member add[0] takes the slot of (Replace).
	replaces string
	done     chan error
}

// apply returns set with ch applied, and whether that changed it.
func (c *Chain) apply(set []Member, ch *change) ([]Member, bool, error) {
	if ch.replaces != "" {
		i := slices.IndexFunc(set, func(m Member) bool { return m.Key == ch.replaces })
		if i < 0 {
			return nil, false, fault.Errorf(fault.NotFound, "dispatcher: the %s dispatcher has no member %s to replace", c.target.describe(), ch.replaces)
		}
		old, m := set[i], &ch.add[0]
		if m.Priority != old.Priority || m.Name != old.Name {
			return nil, false, fmt.Errorf("dispatcher: member %s (program %q, priority %d) cannot take the slot of %s (program %q, priority %d): a replacement keeps the program name and priority",
				m.Key, m.Name, m.Priority, old.Key, old.Name, old.Priority)
		}
		m.Created = old.Created
	}
	next, changed := merge(set, ch.add, ch.remove)
	return next, changed, nil
}

func (c *Chain) applyBatch(batch []*change) {
	if c.shared() {
		unlock, err := c.beginShared()
		if err != nil {
			for _, ch := range batch {
				ch.done <- err
			}
			return
		}
		defer unlock()
	}
	cur := c.members()
	set := cur
	var accepted []*change
	for _, ch := range batch {
		next, changed, err := c.apply(set, ch)
		if err != nil {
			ch.done <- err
			continue
		}
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
		next, changed, err := c.apply(c.members(), ch)
		if err != nil {
			ch.done <- err
			continue
		}
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
		if !keyPattern.MatchString(m.Key) {
			return fmt.Errorf("dispatcher: member key %q is not 1-64 letters, digits or '-'", m.Key)
		}
		if !namePattern.MatchString(m.Name) {
			return fmt.Errorf("dispatcher: member name %q is not a program name", m.Name)
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
