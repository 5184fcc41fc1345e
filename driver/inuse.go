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
	volumes map[string]counted // by volume ID
	digests map[string]int     // image digest -> volumes using it
	live    int                // volumes whose program is in the kernel
}

type counted struct {
	digest    string
	namespace string // the pod's; empty for a local volume
	live      bool   // not marked broken (its program was adopted or loaded)
}

// newCountingStore wraps s, counting the records already on disk. Records
// that cannot be decoded are not counted (and not used by anything else).
func newCountingStore(s recordStore) *countingStore {
	c := &countingStore{recordStore: s, volumes: map[string]counted{}, digests: map[string]int{}}
	recs, _ := s.List()
	for _, r := range recs {
		c.add(r)
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
	c.add(r)
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
func (c *countingStore) add(r *state.Record) {
	v := counted{digest: r.Identity.Digest, namespace: r.Pod.Namespace, live: r.Broken == ""}
	c.volumes[r.VolumeID] = v
	c.digests[v.digest]++
	if v.live {
		c.live++
	}
}

func (c *countingStore) drop(volumeID string) {
	v, ok := c.volumes[volumeID]
	if !ok {
		return
	}
	delete(c.volumes, volumeID)
	if c.digests[v.digest]--; c.digests[v.digest] <= 0 {
		delete(c.digests, v.digest)
	}
	if v.live {
		c.live--
	}
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
	v, ok := c.volumes[volumeID]
	return v.namespace, ok
}
