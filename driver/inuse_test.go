package driver

import (
	"fmt"
	"maps"
	"testing"

	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/loader"
)

func putRecords(t testing.TB, s recordStore, n int) {
	t.Helper()
	for i := range n {
		rec := &state.Record{VolumeID: fmt.Sprintf("vol-%d", i), Identity: loader.Identity{Digest: fmt.Sprintf("sha256:%d", i%7)}}
		if err := s.Put(rec); err != nil {
			t.Fatal(err)
		}
	}
}

// The counts start from the records on disk and follow every Put and
// Delete, including a record replaced under another digest.
func TestCountingStoreOnDisk(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	putRecords(t, st, 10)
	c := newCountingStore(st)
	if c.count() != 10 || len(c.digestsInUse()) != 7 {
		t.Fatalf("from disk: %d volumes, digests %v", c.count(), c.digestsInUse())
	}
	if err := c.Put(&state.Record{VolumeID: "vol-0", Identity: loader.Identity{Digest: "sha256:new"}}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 10; i++ {
		if err := c.Delete(fmt.Sprintf("vol-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Delete("vol-unknown"); err != nil {
		t.Fatal(err)
	}
	if want := map[string]bool{"sha256:new": true}; c.count() != 1 || !maps.Equal(c.digestsInUse(), want) {
		t.Fatalf("after updates: %d volumes, digests %v", c.count(), c.digestsInUse())
	}
	// What is on disk agrees.
	if c2 := newCountingStore(st); c2.count() != 1 || !maps.Equal(c2.digestsInUse(), c.digestsInUse()) {
		t.Fatalf("re-read: %d volumes, digests %v", c2.count(), c2.digestsInUse())
	}
}

// The gauges and the cache's in-use check cost the same on a full node as
// on an empty one: compare the sub-benchmarks.
func BenchmarkInUse(b *testing.B) {
	for _, n := range []int{0, 100, 500} {
		b.Run(fmt.Sprintf("volumes=%d", n), func(b *testing.B) {
			st, err := state.Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			putRecords(b, st, n)
			d, err := newDriver(Options{NodeID: "n"}, newFakeLoader(), st, newFakeMounts())
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				d.metricsState()
				d.DigestsInUse()
			}
		})
	}
}
