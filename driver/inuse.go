package driver

import (
	"path/filepath"
	"sort"
	"sync"

	"github.com/bpfmount/bpfmount/driver/state"
)

// countingStore keeps every record in memory, next to the store on disk:
// a publish, an unpublish, the admin listing, the node gauges and the
// image cache's in-use check read no file and decode no JSON, so their
// cost does not grow with the volumes on the node. It is filled once from
// the records on disk and then follows every Put and Delete made through
// it; all record writes go through it. The disk stays the truth: a record
// is changed in memory only after it was written or removed there, and a
// restart reads them all again.
type countingStore struct {
	recordStore

	mu      sync.Mutex
	records map[string]*state.Record // by volume ID; never handed out, only clones
	digests map[string]int           // image digest -> volumes using it
	// targets indexes the volume IDs by clean target path, so a lookup by
	// target (unpublish --target) costs the same on a full node.
	targets map[string]map[string]struct{}
	live    int // volumes whose program is in the kernel
	// unreadable is set when some record on disk could not be decoded at
	// start: such a volume is not in records, so what records does not
	// hold is read from disk (a Get of it fails as before, List reports it)
	// until the next start.
	unreadable bool
	// lingerKeys are the keys of the linger records on disk: a publish
	// asks for lingers twice (expiry, take-over), and with none on the
	// node (the usual case) neither reads the disk. lingersUnreadable, set
	// when they could not be listed at start, sends every linger call to
	// the disk until the next start.
	lingerKeys        map[string]struct{}
	lingersUnreadable bool
}

// newCountingStore wraps s, indexing the records already on disk. Records
// that cannot be decoded are not indexed or counted.
func newCountingStore(s recordStore) *countingStore {
	c := &countingStore{recordStore: s, records: map[string]*state.Record{}, digests: map[string]int{}, targets: map[string]map[string]struct{}{},
		lingerKeys: map[string]struct{}{}}
	recs, err := s.List()
	c.unreadable = err != nil
	for _, r := range recs {
		c.add(r.Clone())
	}
	ls, err := s.Lingers()
	c.lingersUnreadable = err != nil
	for _, l := range ls {
		c.lingerKeys[l.Key] = struct{}{}
	}
	return c
}

// noLinger reports, from memory, that key has no linger record (any key
// when key is ""), so the disk need not be asked.
func (c *countingStore) noLinger(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lingersUnreadable {
		return false
	}
	if key == "" {
		return len(c.lingerKeys) == 0
	}
	_, ok := c.lingerKeys[key]
	return !ok
}

// GetLinger returns key's linger record, or nil when there is none.
func (c *countingStore) GetLinger(key string) (*state.Linger, error) {
	if c.noLinger(key) {
		return nil, nil
	}
	return c.recordStore.GetLinger(key)
}

// Lingers returns every linger record; none without reading the disk when
// none was written.
func (c *countingStore) Lingers() ([]*state.Linger, error) {
	if c.noLinger("") {
		return nil, nil
	}
	return c.recordStore.Lingers()
}

// PutLinger writes a linger record and notes its key.
func (c *countingStore) PutLinger(l *state.Linger) error {
	// Noted first: were the write to fail half-way, the disk is asked.
	c.mu.Lock()
	c.lingerKeys[l.Key] = struct{}{}
	c.mu.Unlock()
	return c.recordStore.PutLinger(l)
}

// DeleteLinger removes a linger record and forgets its key once it is gone.
func (c *countingStore) DeleteLinger(key string) error {
	if err := c.recordStore.DeleteLinger(key); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.lingerKeys, key)
	c.mu.Unlock()
	return nil
}

// Get returns a copy of the volume's record, or nil when it has none.
func (c *countingStore) Get(volumeID string) (*state.Record, error) {
	c.mu.Lock()
	r, ok := c.records[volumeID]
	unreadable := c.unreadable
	c.mu.Unlock()
	if ok {
		return r.Clone(), nil
	}
	if !unreadable {
		return nil, nil
	}
	r, err := c.recordStore.Get(volumeID)
	if err != nil || r == nil {
		return r, err
	}
	// Repaired by hand since the start: index it from now on.
	c.mu.Lock()
	if _, ok := c.records[volumeID]; !ok {
		c.add(r.Clone())
	}
	c.mu.Unlock()
	return r, nil
}

// List returns a copy of every record, sorted by volume ID. While some
// record on disk is unreadable, it lists the disk, so the error is seen.
func (c *countingStore) List() ([]*state.Record, error) {
	c.mu.Lock()
	if c.unreadable {
		c.mu.Unlock()
		return c.recordStore.List()
	}
	out := make([]*state.Record, 0, len(c.records))
	for _, r := range c.records {
		out = append(out, r.Clone())
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].VolumeID < out[j].VolumeID })
	return out, nil
}

// Put writes the record and indexes a copy of it.
func (c *countingStore) Put(r *state.Record) error {
	if err := c.recordStore.Put(r); err != nil {
		return err
	}
	cp := r.Clone()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop(r.VolumeID)
	c.add(cp)
	return nil
}

// Delete removes the record and drops it from the index.
func (c *countingStore) Delete(volumeID string) error {
	if err := c.recordStore.Delete(volumeID); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop(volumeID)
	return nil
}

// add and drop need c.mu held (or c not yet shared).
func (c *countingStore) add(r *state.Record) {
	c.records[r.VolumeID] = r
	c.digests[r.Identity.Digest]++
	if r.Broken == "" {
		c.live++
	}
	t := filepath.Clean(r.TargetPath)
	if c.targets[t] == nil {
		c.targets[t] = map[string]struct{}{}
	}
	c.targets[t][r.VolumeID] = struct{}{}
}

func (c *countingStore) drop(volumeID string) {
	r, ok := c.records[volumeID]
	if !ok {
		return
	}
	delete(c.records, volumeID)
	if c.digests[r.Identity.Digest]--; c.digests[r.Identity.Digest] <= 0 {
		delete(c.digests, r.Identity.Digest)
	}
	if r.Broken == "" {
		c.live--
	}
	t := filepath.Clean(r.TargetPath)
	if delete(c.targets[t], volumeID); len(c.targets[t]) == 0 {
		delete(c.targets, t)
	}
}

// atTargets returns a copy of the records whose target is one of targets
// (compared clean), sorted by volume ID, from the index: it copies only
// those. While some record on disk is unreadable it filters the disk's
// listing, so the error is seen.
func (c *countingStore) atTargets(targets []string) ([]*state.Record, error) {
	c.mu.Lock()
	if c.unreadable {
		c.mu.Unlock()
		recs, err := c.recordStore.List()
		if err != nil {
			return nil, err
		}
		return recordsAt(recs, targets), nil
	}
	var out []*state.Record
	seen := map[string]bool{}
	for _, t := range targets {
		t = filepath.Clean(t)
		if seen[t] {
			continue
		}
		seen[t] = true
		for id := range c.targets[t] {
			out = append(out, c.records[id].Clone())
		}
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].VolumeID < out[j].VolumeID })
	return out, nil
}

// heldByOther reports whether a record other than volumeID's holds the
// program of key.
func (c *countingStore) heldByOther(key, volumeID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, r := range c.records {
		if id != volumeID && r.Key == key {
			return true
		}
	}
	return false
}

// count returns the number of volumes whose program is in the kernel: a
// record marked broken (its pins gone after a reboot, or damaged) is not
// counted.
func (c *countingStore) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.live
}

// digestsInUse returns the digests some recorded volume uses.
func (c *countingStore) digestsInUse() map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]bool, len(c.digests))
	for d := range c.digests {
		out[d] = true
	}
	return out
}

// namespace returns the pod namespace of a recorded volume ("" for a local
// one); ok is false when the volume has no record.
func (c *countingStore) namespace(volumeID string) (ns string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.records[volumeID]
	if !ok {
		return "", false
	}
	return r.Pod.Namespace, true
}
