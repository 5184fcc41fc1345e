package loader

import (
	"sync"
	"testing"
)

func TestNamedLocksExcludeAndForget(t *testing.T) {
	var n namedLocks
	var wg sync.WaitGroup
	counter := 0
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock := n.lock("eth0")
			counter++ // a data race here fails under -race
			unlock()
		}()
	}
	wg.Wait()
	if counter != 50 {
		t.Fatalf("counter %d", counter)
	}
	unlock := n.lock("other")
	unlock()
	if len(n.locks) != 0 {
		t.Fatalf("%d locks kept after every holder left", len(n.locks))
	}
}
