package loader

import (
	"context"
	"testing"
	"time"
)

// A request that joins an existing attachment does not wait for the
// interface lock, which loads of other programs on that interface hold.
func TestJoinDoesNotWaitForInterfaceLock(t *testing.T) {
	l := &Loader{entries: map[string]*entry{}, chains: nil, specs: newSpecCache(specCacheBytes)}
	id := Identity{Digest: "sha256:00", Program: "prog", Hook: HookTCX, Interface: "eth0", Direction: Ingress, Priority: 10}
	key := id.Key()
	l.entries[key] = &entry{id: id, key: key, attached: true, owners: map[string]struct{}{"vol-1": {}}}

	unlock := l.lockIface("eth0") // a load on eth0 in progress
	defer unlock()
	done := make(chan *Program, 1)
	go func() {
		p, err := l.Acquire(context.Background(), &Resolved{Identity: id}, "vol-2")
		if err != nil {
			t.Error(err)
		}
		done <- p
	}()
	select {
	case p := <-done:
		if p == nil || !p.Shared || p.Owners != 2 {
			t.Fatalf("joined %+v, want the shared attachment with 2 owners", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Acquire of an existing attachment waited for the interface lock")
	}
}

// A request for a new program does its load work (here: the interface
// lookup, which fails) before it queues for the interface lock, so loads
// for one interface do not wait for each other's attach.
func TestLoadDoesNotWaitForInterfaceLock(t *testing.T) {
	l := &Loader{entries: map[string]*entry{}, specs: newSpecCache(specCacheBytes)}
	id := Identity{Digest: "sha256:00", Program: "prog", Hook: HookTCX, Interface: "bpfmnope0", Direction: Ingress, Priority: 10}
	unlock := l.lockIface(id.Interface) // another program's attach in progress
	defer unlock()
	done := make(chan error, 1)
	go func() {
		_, err := l.Acquire(context.Background(), &Resolved{Identity: id}, "vol-1")
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Acquire on a missing interface succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Acquire of a new program waited for the interface lock before loading")
	}
}
