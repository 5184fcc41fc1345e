package loader_test

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

func TestMain(m *testing.M) {
	testenv.RunHelperIfAsked()
	os.Exit(m.Run())
}

// TestReleaseUnknownKeyRacesAcquire: a Release of a key nobody holds (a
// retried unpublish, a rollback) runs while an Acquire of the identical
// request makes its pins. The Release must never remove them: after every
// Acquire the attachment's pins are there.
func TestReleaseUnknownKeyRacesAcquire(t *testing.T) {
	testenv.RequireRoot(t)
	root := filepath.Join(testenv.BPFFS(t), "bpfmount")
	l := openLoader(t, root)
	defer l.Close()
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	r, err := l.Resolve(testenv.Ctx(t), loader.Request{
		Image: bytecode.Request{Reference: img}, Hook: loader.HookXDP, Interface: v.Host, Priority: 50,
		XDPMode: loader.XDPModeAuto,
	})
	if err != nil {
		t.Fatal(err)
	}
	key := r.Identity.Key()
	pin := filepath.Join(root, "programs", key, "program")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := l.Release(key, "other-volume"); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := 0; i < 40 && !t.Failed(); i++ {
		p, err := l.Acquire(testenv.Ctx(t), r, "vol")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(pin); err != nil {
			t.Errorf("iteration %d: the pins of a held attachment vanished: %v", i, err)
		}
		if err := l.Release(p.Key, "vol"); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if ids := testenv.XDPProgram(t, v.Host); ids != 0 {
		t.Errorf("XDP program %d left attached", ids)
	}
}
