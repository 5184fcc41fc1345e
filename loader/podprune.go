package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
)

// A pod interface's chain is needed while an attachment holds a member of
// it and the namespace it runs in lives. A crash can leave one that is
// not: members of volumes whose records went (a crash between the chain's
// change and the release), or a chain in a sandbox's namespace that went
// while the daemon was down. The kernel detached such a chain with its
// namespace, but its pins (the dispatcher's link, its revisions' programs
// and members' freplace links) keep the kernel's objects alive: Prune
// removes them, at start and at every garbage collection, and the pod's
// waiter builds a new chain when its pod has a sandbox again.
//
// A chain whose members no attachment holds at all is removed whether or
// not its namespace lives: unpinning an XDP dispatcher's link detaches it;
// a tc dispatcher's filter, attached by netlink, stays in a namespace
// that still lives (its slots emptied, it passes every packet on) until
// the namespace goes, because nothing left names that namespace.

// prunePodChains prunes the pod interfaces' chains pinned under the
// given names. Caller holds l.gc exclusively.
func (l *Loader) prunePodChains(names []string) error {
	held := map[string][]*entry{}
	open := map[string]*dispatcher.Chain{}
	l.mu.Lock()
	for _, e := range l.entries {
		if l.podChained(e.id) {
			name := podChainName(e.id)
			held[name] = append(held[name], e)
		}
	}
	for _, name := range names {
		if c := l.chains[name]; c != nil {
			open[name] = c
		}
	}
	l.mu.Unlock()
	var errs []error
	for _, name := range names {
		if c := open[name]; c != nil {
			errs = append(errs, l.pruneOpenPodChain(name, c))
			continue
		}
		why := ""
		switch {
		case len(held[name]) == 0:
			why = "no volume holds a member of it"
		case !l.anyNetnsAlive(held[name]):
			why = "the pod's network namespace it ran in is gone"
		default:
			continue
		}
		klog.InfoS("Removing the pins of a pod interface's dispatcher", "dispatcher", name, "reason", why)
		if err := os.RemoveAll(filepath.Join(l.root, "dispatchers", name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing the pins of dispatcher %s: %w", name, err))
			continue
		}
		for _, e := range held[name] {
			// Its member left with the chain: no namespace to come back to.
			_ = os.Remove(filepath.Join(l.pinDir(e.key), netnsPin))
		}
	}
	return errors.Join(errs...)
}

// pruneOpenPodChain removes from an open pod chain the members no
// attachment holds, and forgets the chain if that empties it.
func (l *Loader) pruneOpenPodChain(name string, c *dispatcher.Chain) error {
	var orphans []string
	l.mu.Lock()
	for _, m := range c.Members() {
		if l.entries[m.Key] == nil {
			orphans = append(orphans, m.Key)
		}
	}
	l.mu.Unlock()
	if len(orphans) == 0 {
		return nil
	}
	klog.InfoS("Removing pod dispatcher members no volume owns", "dispatcher", name, "members", orphans)
	err := c.Update(nil, orphans)
	l.forgetPodChain(name, c)
	return err
}

// anyNetnsAlive reports whether a namespace one of es was recorded in
// (the symbolic link beside its pins) is still the same namespace. One it
// cannot tell of counts as alive: pruning unpins the chain's dispatcher
// link, which detaches it from a pod that may still run.
func (l *Loader) anyNetnsAlive(es []*entry) bool {
	return slices.ContainsFunc(es, func(e *entry) bool {
		path, ino := readNetnsPin(l.pinDir(e.key))
		if path == "" {
			return false
		}
		gone, err := netnsGone(path, ino, netnsInode)
		if err != nil {
			klog.ErrorS(err, "Cannot tell whether a pod's network namespace is gone; keeping its dispatcher", "netns", path)
		}
		return !gone
	})
}

// netnsGone reports whether the namespace recorded as inode ino at path
// is gone: path is gone, is no namespace any more (the runtime undid its
// bind mount), or is another namespace. Any other error of inode (say
// EACCES, EIO) tells nothing: not gone, with the error.
func netnsGone(path string, ino uint64, inode func(string) (uint64, error)) (bool, error) {
	cur, err := inode(path)
	switch {
	case errors.Is(err, fs.ErrNotExist), err != nil && fault.Of(err) == fault.Invalid:
		return true, nil
	case err != nil:
		return false, err
	}
	return cur != ino, nil
}

// isPodChainDir reports whether a directory under dispatchers/ is a pod
// interface's chain (podChainName).
func isPodChainDir(name string) bool { return strings.HasPrefix(name, "pod-") }
