package driver

import (
	"sync"

	"github.com/bpfmount/bpfmount/driver/state"
)

// countingStore keeps, in memory, which volumes have a record and the image
// digest each uses, so the node gauges and the image cache's in-use check
// cost nothing per volume on the node instead of re-reading every record
// from disk. It is filled once from the records on disk and then follows
// every Put and Delete made through it; all record writes go through it.
type countingStore struct {
	recordStore

	mu      sync.Mutex
	volumes map[string]string // volume ID -> image digest
	digests map[string]int    // image digest -> volumes using it
}

// newCountingStore wraps s, counting the records already on disk. Records
// that cannot be decoded are not counted (and not used by anything else).
func newCountingStore(s recordStore) *countingStore {
	c := &countingStore{recordStore: s, volumes: map[string]string{}, digests: map[string]int{}}
	recs, _ := s.List()
	for _, r := range recs {
		c.add(r.VolumeID, r.Identity.Digest)
	}
	return c
}

// Put writes the record and counts it.
func (c *countingStore) Put(r *state.Record) error {
	if err := c.recordStore.Put(r); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop(r.VolumeID)
	c.add(r.VolumeID, r.Identity.Digest)
	return nil
}

// Delete removes the record and stops counting it.
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
func (c *countingStore) add(volumeID, digest string) {
	c.volumes[volumeID] = digest
	c.digests[digest]++
}

func (c *countingStore) drop(volumeID string) {
	digest, ok := c.volumes[volumeID]
	if !ok {
		return
	}
	delete(c.volumes, volumeID)
	if c.digests[digest]--; c.digests[digest] <= 0 {
		delete(c.digests, digest)
	}
}

// count returns the number of volumes with a record.
func (c *countingStore) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.volumes)
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
