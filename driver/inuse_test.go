package driver

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
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

// Records are served from memory: a publish or a listing reads no file.
// What a caller does to a record it got changes nothing in the index.
func TestRecordIndexInMemory(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	putRecords(t, st, 3)
	c := newCountingStore(st)
	// Gone from disk behind the index's back: still served, so not read.
	if err := os.RemoveAll(filepath.Join(dir, "volumes")); err != nil {
		t.Fatal(err)
	}
	r, err := c.Get("vol-1")
	if err != nil || r == nil || r.Identity.Digest != "sha256:1" {
		t.Fatalf("Get = %+v, %v; want vol-1 from memory", r, err)
	}
	r.Identity.Digest, r.Broken = "changed", "changed"
	if again, _ := c.Get("vol-1"); again.Identity.Digest != "sha256:1" || again.Broken != "" {
		t.Fatalf("a caller's change reached the index: %+v", again)
	}
	recs, err := c.List()
	if err != nil || len(recs) != 3 || recs[0].VolumeID != "vol-0" || recs[2].VolumeID != "vol-2" {
		t.Fatalf("List = %v, %v; want the 3 records sorted", recs, err)
	}
	if r, err := c.Get("vol-unknown"); r != nil || err != nil {
		t.Fatalf("Get of an unknown volume = %+v, %v", r, err)
	}
	// A failed write changes nothing in memory.
	if err := c.Put(&state.Record{VolumeID: "vol-new"}); err == nil {
		t.Fatal("Put into a removed directory succeeded")
	}
	if r, _ := c.Get("vol-new"); r != nil || c.count() != 3 {
		t.Fatalf("a failed Put was indexed: %+v, count %d", r, c.count())
	}
}

// A record on disk that cannot be decoded at start is not forgotten: its
// Get fails as it did, List reports the error, and once repaired by hand
// it is found.
func TestRecordIndexUnreadable(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	putRecords(t, st, 2)
	file := filepath.Join(dir, "volumes", "vol-1.json")
	good, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, good[:len(good)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCountingStore(st)
	if r, err := c.Get("vol-1"); err == nil {
		t.Fatalf("Get of a damaged record = %+v, want an error", r)
	}
	if recs, err := c.List(); err == nil || len(recs) != 1 {
		t.Fatalf("List = %v, %v; want the good record and an error", recs, err)
	}
	if err := os.WriteFile(file, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Get("vol-1"); err != nil || r == nil || c.count() != 2 {
		t.Fatalf("after repair: Get = %+v, %v, count %d", r, err, c.count())
	}
}

// intentCounter counts how often the intents are listed.
type intentCounter struct {
	recordStore
	n int
}

func (s *intentCounter) Intents() ([]*state.Intent, error) {
	s.n++
	return s.recordStore.Intents()
}

// Garbage collection lists the intents once, however many staging
// directories there are: here, those of interrupted operations whose
// intents are kept (so nothing is withdrawn).
func TestCollectGarbageListsIntentsOnce(t *testing.T) {
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		vol := fmt.Sprintf("vol-%d", i)
		if err := st.PutIntent(&state.Intent{Op: state.OpPublish, VolumeID: vol, StagingPath: st.StagingPath(vol)}); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(st.StagingPath(vol), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ic := &intentCounter{recordStore: st}
	d, err := newDriver(Options{NodeID: "n"}, newFakeLoader(), ic, newFakeMounts())
	if err != nil {
		t.Fatal(err)
	}
	if staging, _ := d.CollectGarbage(); len(staging) != 0 {
		t.Fatalf("collected the staging directories of kept intents: %v", staging)
	}
	if ic.n != 1 {
		t.Fatalf("intents listed %d times, want 1", ic.n)
	}
}

// A publish's and an unpublish's record lookup: from memory, against the
// store on disk it replaced (a file read and a JSON decode).
func BenchmarkRecordGet(b *testing.B) {
	st, err := state.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	putRecords(b, st, 500)
	for name, s := range map[string]recordStore{"memory": newCountingStore(st), "disk": st} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if r, err := s.Get("vol-250"); err != nil || r == nil {
					b.Fatal(r, err)
				}
			}
		})
	}
}

// A lookup by target answers from the index: the records at those targets
// (compared clean), sorted by volume ID, following a record moved to
// another target and one deleted; none for an unknown target.
func TestRecordsAtTargets(t *testing.T) {
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		rec := &state.Record{VolumeID: fmt.Sprintf("vol-%d", i), TargetPath: fmt.Sprintf("/t/%d", i%2)}
		if err := st.Put(rec); err != nil {
			t.Fatal(err)
		}
	}
	c := newCountingStore(st)
	ids := func(targets ...string) []string {
		t.Helper()
		recs, err := c.atTargets(targets)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range recs {
			out = append(out, r.VolumeID)
		}
		return out
	}
	if got := ids("/t/0/", "/t/0"); fmt.Sprint(got) != "[vol-0 vol-2]" {
		t.Fatalf("at /t/0: %v", got)
	}
	if err := c.Put(&state.Record{VolumeID: "vol-2", TargetPath: "/t/9"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete("vol-1"); err != nil {
		t.Fatal(err)
	}
	if got := ids("/t/0", "/t/1", "/t/9"); fmt.Sprint(got) != "[vol-0 vol-2 vol-3]" {
		t.Fatalf("after a move and a delete: %v", got)
	}
	if got := ids("/t/0"); fmt.Sprint(got) != "[vol-0]" {
		t.Fatalf("a moved record stayed at its old target: %v", got)
	}
	if got := ids("/nowhere"); got != nil {
		t.Fatalf("at an unknown target: %v", got)
	}
	// The records handed out are copies.
	recs, _ := c.atTargets([]string{"/t/0"})
	recs[0].TargetPath = "/elsewhere"
	if got := ids("/t/0"); fmt.Sprint(got) != "[vol-0]" {
		t.Fatalf("a caller's change reached the index: %v", got)
	}
}

// Unpublish's lookup by target costs the same on a full node as on an
// empty one: compare the sub-benchmarks.
func BenchmarkRecordsAtTarget(b *testing.B) {
	for _, n := range []int{0, 100, 500} {
		b.Run(fmt.Sprintf("volumes=%d", n), func(b *testing.B) {
			st, err := state.Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			for i := range n + 1 {
				if err := st.Put(&state.Record{VolumeID: fmt.Sprintf("vol-%d", i), TargetPath: fmt.Sprintf("/t/%d", i)}); err != nil {
					b.Fatal(err)
				}
			}
			c := newCountingStore(st)
			targets := []string{fmt.Sprintf("/t/%d", n/2)}
			b.ReportAllocs()
			for b.Loop() {
				if recs, _ := c.atTargets(targets); len(recs) != 1 {
					b.Fatal("not found")
				}
			}
		})
	}
}

// lingerReads counts the linger calls that reach the store on disk.
type lingerReads struct {
	recordStore
	n int
}

func (s *lingerReads) GetLinger(key string) (*state.Linger, error) {
	s.n++
	return s.recordStore.GetLinger(key)
}

func (s *lingerReads) Lingers() ([]*state.Linger, error) {
	s.n++
	return s.recordStore.Lingers()
}

// A publish asks for lingers twice (expiry, take-over): with none on the
// node neither reads the disk; one written or found at start is read from
// the disk, and one deleted is not asked for again.
func TestCountingStoreLingersFromMemory(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	disk := &lingerReads{recordStore: st}
	c := newCountingStore(disk)
	disk.n = 0 // the listing at start
	if l, err := c.GetLinger("k1"); l != nil || err != nil {
		t.Fatalf("GetLinger on an empty node: %v, %v", l, err)
	}
	if ls, err := c.Lingers(); len(ls) != 0 || err != nil {
		t.Fatalf("Lingers on an empty node: %v, %v", ls, err)
	}
	if disk.n != 0 {
		t.Fatalf("%d linger reads reached the disk on a node with none", disk.n)
	}
	id := loader.Identity{Digest: "sha256:1", Program: "p", Hook: loader.HookXDP, Interface: "eth0"}
	k1 := id.Key()
	if err := c.PutLinger(&state.Linger{Key: k1, Identity: id, ProgramID: 7}); err != nil {
		t.Fatal(err)
	}
	if l, err := c.GetLinger(k1); l == nil || l.ProgramID != 7 || err != nil {
		t.Fatalf("GetLinger after PutLinger: %v, %v", l, err)
	}
	if l, _ := c.GetLinger("k2"); l != nil {
		t.Fatalf("GetLinger of another key: %v", l)
	}
	// Found at the next start too.
	if l, _ := newCountingStore(st).GetLinger(k1); l == nil {
		t.Fatal("a linger on disk at start is not found")
	}
	if err := c.DeleteLinger(k1); err != nil {
		t.Fatal(err)
	}
	disk.n = 0
	if ls, _ := c.Lingers(); len(ls) != 0 || disk.n != 0 {
		t.Fatalf("after DeleteLinger: %v, %d disk reads", ls, disk.n)
	}

	// A linger record that cannot be read at start: every call asks the
	// disk, so its error is seen.
	if err := os.WriteFile(filepath.Join(dir, "lingers", "k3.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newCountingStore(st).Lingers(); err == nil {
		t.Fatal("an unreadable linger record is not reported")
	}
}
