package loader

import "sync"

// namedLocks hands out one mutex per name (an interface, an identity key).
// An entry lives only while someone holds or waits for it, so a daemon
// that sees thousands of pod interfaces and identities over its life does
// not keep a mutex for each.
type namedLocks struct {
	mu    sync.Mutex
	locks map[string]*namedLock
}

type namedLock struct {
	sync.Mutex
	refs int // holders and waiters
}

// lock locks name and returns its unlock function.
func (n *namedLocks) lock(name string) func() {
	n.mu.Lock()
	if n.locks == nil {
		n.locks = map[string]*namedLock{}
	}
	l, ok := n.locks[name]
	if !ok {
		l = &namedLock{}
		n.locks[name] = l
	}
	l.refs++
	n.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		n.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(n.locks, name)
		}
		n.mu.Unlock()
	}
}
