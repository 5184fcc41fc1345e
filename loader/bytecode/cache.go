package bytecode

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/bpfmount/bpfmount/internal/atomicfile"
)

// The image cache is content-addressed:
//
//	CacheDir/lock               flock: one process per cache
//	CacheDir/index.json         images, tag → digest, last use, signatures
//	CacheDir/blobs/sha256/HEX   manifests, configs, layers
//	CacheDir/tmp/               downloads in progress (emptied at start)
//
// A blob appears under blobs/ only by rename after its digest and size were
// checked, and is checked again on every read, so neither a crash nor a
// power loss (no fsync: a damaged blob is detected and pulled again) can
// serve wrong bytes. Credentials are never written here.

const cacheIndexVersion = 1

// How often lastUsed updates from cache hits reach the disk: LRU order
// survives a restart to within this interval, and a hit costs no write.
const touchFlushInterval = 30 * time.Second

type cacheIndex struct {
	Version int                    `json:"version"`
	Images  map[string]*cacheEntry `json:"images"`
	// Refs maps "registry/repo:tag" and "registry/repo@digest" to the image
	// they last resolved to on this node's platform.
	Refs map[string]cacheRef `json:"refs"`
}

type cacheRef struct {
	Digest string `json:"digest"`
	// Index is the digest of the multi-platform index Digest was picked
	// from, if any (a signature may be over either).
	Index string `json:"index,omitempty"`
}

type cacheEntry struct {
	MediaType types.MediaType `json:"mediaType"`
	// Blobs are the config and layers; the manifest is the blob named by
	// the entry's own digest.
	Blobs        []cacheBlob `json:"blobs"`
	ManifestSize int64       `json:"manifestSize"`
	LastUsed     time.Time   `json:"lastUsed"`
	// Signatures found in the registry, by "registry/repo@signed-digest".
	// Kept whether or not they verify, so that any key can check them
	// later without the network.
	Signatures map[string][]cachedSig `json:"signatures,omitempty"`
}

type cacheBlob struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

type cachedSig struct {
	Payload   []byte `json:"payload"`
	Signature string `json:"signature"`
}

// errCorrupt marks a cached blob whose bytes do not match its digest.
type errCorrupt struct{ digest string }

func (e *errCorrupt) Error() string {
	return fmt.Sprintf("cached blob %s does not match its digest", e.digest)
}

type cache struct {
	dir  string
	now  func() time.Time
	lock *os.File

	mu       sync.Mutex
	idx      cacheIndex
	pending  map[string]int // blobs that pulls in progress write or rely on
	dirty    bool
	lastSave time.Time
}

var hexDigestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

func openCache(dir string, now func() time.Time) (*cache, error) {
	c := &cache{dir: dir, now: now, pending: map[string]int{}}
	// 0700: the cache may hold images pulled with a private secret.
	for _, d := range []string{dir, c.blobDir(), c.tmpDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("image cache: %v", err)
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("image cache: %v", err)
	}
	// Cleaning tmp/ and orphan blobs is only safe with no other writer.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("image cache %s is in use by another process (%v)", dir, err)
	}
	c.lock = f
	// Downloads a crash interrupted are never visible: drop them.
	if ents, err := os.ReadDir(c.tmpDir()); err == nil {
		for _, e := range ents {
			os.RemoveAll(filepath.Join(c.tmpDir(), e.Name()))
		}
	}
	c.idx = c.readIndex()
	c.check()
	return c, nil
}

func (c *cache) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	if c.dirty {
		err = c.saveLocked()
	}
	if c.lock != nil {
		c.lock.Close() // releases the flock
		c.lock = nil
	}
	return err
}

func (c *cache) blobDir() string { return filepath.Join(c.dir, "blobs", "sha256") }
func (c *cache) tmpDir() string  { return filepath.Join(c.dir, "tmp") }

func (c *cache) blobPath(digest string) (string, error) {
	if !hexDigestRE.MatchString(digest) {
		return "", fmt.Errorf("unsupported digest %q (only sha256 is)", digest)
	}
	return filepath.Join(c.blobDir(), digest[len("sha256:"):]), nil
}

// readIndex loads index.json; an unreadable index starts an empty cache
// (the blobs it named become orphans and are removed by check).
func (c *cache) readIndex() cacheIndex {
	empty := cacheIndex{Version: cacheIndexVersion, Images: map[string]*cacheEntry{}, Refs: map[string]cacheRef{}}
	raw, err := os.ReadFile(filepath.Join(c.dir, "index.json"))
	if err != nil {
		return empty
	}
	var idx cacheIndex
	if json.Unmarshal(raw, &idx) != nil || idx.Version != cacheIndexVersion {
		return empty
	}
	if idx.Images == nil {
		idx.Images = map[string]*cacheEntry{}
	}
	if idx.Refs == nil {
		idx.Refs = map[string]cacheRef{}
	}
	return idx
}

// check drops entries whose blobs are missing and blobs no entry names.
// Contents are not hashed here but on each read.
func (c *cache) check() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for d, e := range c.idx.Images {
		for _, b := range e.allBlobs(d) {
			p, err := c.blobPath(b.Digest)
			if err != nil {
				c.dropLocked(d)
				break
			}
			if st, err := os.Stat(p); err != nil || st.Size() != b.Size {
				c.dropLocked(d)
				break
			}
		}
	}
	c.removeOrphansLocked()
	c.saveLocked()
}

func (e *cacheEntry) allBlobs(digest string) []cacheBlob {
	return append([]cacheBlob{{Digest: digest, Size: e.ManifestSize}}, e.Blobs...)
}

func (e *cacheEntry) size(digest string) int64 {
	var n int64
	for _, b := range e.allBlobs(digest) {
		n += b.Size
	}
	return n
}

func (c *cache) saveLocked() error {
	raw, err := json.Marshal(&c.idx)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(c.dir, "index.json"), raw, 0o600, c.tmpDir()); err != nil {
		return fmt.Errorf("image cache: writing index: %v", err)
	}
	c.dirty = false
	c.lastSave = c.now()
	return nil
}

// readBlob returns a blob's bytes after checking size and digest. A missing
// blob is fs.ErrNotExist; a damaged one is removed and reported as
// *errCorrupt.
func (c *cache) readBlob(digest string, size int64) ([]byte, error) {
	p, err := c.blobPath(digest)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	if int64(len(data)) != size || digestOf(data) != digest {
		os.Remove(p)
		return nil, &errCorrupt{digest}
	}
	return data, nil
}

// writeBlob stores data, already checked against digest, under its digest.
func (c *cache) writeBlob(digest string, data []byte) error {
	p, err := c.blobPath(digest)
	if err != nil {
		return err
	}
	if digestOf(data) != digest {
		return &errCorrupt{digest}
	}
	// The temp file lives in tmp/, never in blobs/, where an orphan sweep
	// would take it for an unreferenced blob.
	return atomicfile.WriteFile(p, data, 0o600, c.tmpDir())
}

func digestOf(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// acquire marks blobs as in use by a pull, so that neither eviction nor
// another pull's cleanup removes them before the pull commits.
func (c *cache) acquire(digests []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range digests {
		c.pending[d]++
	}
}

// release undoes acquire and removes the blobs in discard that nothing
// references any more (the leftovers of a failed pull).
func (c *cache) release(digests, discard []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range digests {
		if c.pending[d]--; c.pending[d] <= 0 {
			delete(c.pending, d)
		}
	}
	if len(discard) == 0 {
		return
	}
	used := c.referencedLocked()
	for _, d := range discard {
		if !used[d] && c.pending[d] == 0 {
			if p, err := c.blobPath(d); err == nil {
				os.Remove(p)
			}
		}
	}
}

func (c *cache) referencedLocked() map[string]bool {
	used := map[string]bool{}
	for d, e := range c.idx.Images {
		for _, b := range e.allBlobs(d) {
			used[b.Digest] = true
		}
	}
	return used
}

// lookup returns what key last resolved to, or the image itself when key
// is "repo@digest" of an image some other reference brought in.
func (c *cache) lookup(key, digest string) (cacheRef, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r, ok := c.idx.Refs[key]; ok {
		if _, ok := c.idx.Images[r.Digest]; ok {
			return r, true
		}
	}
	if digest != "" {
		if _, ok := c.idx.Images[digest]; ok {
			return cacheRef{Digest: digest}, true
		}
	}
	return cacheRef{}, false
}

// load reads a cached image's parts, every blob checked. A damaged image
// is dropped from the index and reported as *errCorrupt.
func (c *cache) load(digest string) (imageParts, error) {
	c.mu.Lock()
	e, ok := c.idx.Images[digest]
	var blobs []cacheBlob
	var mt types.MediaType
	if ok {
		blobs, mt = e.allBlobs(digest), e.MediaType
	}
	c.mu.Unlock()
	if !ok {
		return imageParts{}, fs.ErrNotExist
	}
	data := map[string][]byte{}
	for _, b := range blobs {
		d, err := c.readBlob(b.Digest, b.Size)
		if err != nil {
			// Missing or damaged: the entry is useless; forget it.
			c.forget(digest)
			return imageParts{}, &errCorrupt{b.Digest}
		}
		data[b.Digest] = d
	}
	m, err := v1.ParseManifest(bytes.NewReader(data[digest]))
	if err != nil || len(m.Layers) != 1 || data[m.Config.Digest.String()] == nil || data[m.Layers[0].Digest.String()] == nil || !mt.IsImage() {
		// Only a changed index file can name blobs that do not fit.
		c.forget(digest)
		return imageParts{}, &errCorrupt{digest}
	}
	return imageParts{digest: digest, manifest: m, config: data[m.Config.Digest.String()], layer: data[m.Layers[0].Digest.String()]}, nil
}

func (c *cache) forget(digest string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropLocked(digest)
	c.saveLocked()
}

// commit records a pulled image under the given reference keys.
func (c *cache) commit(digest string, e *cacheEntry, keys []string, ref cacheRef) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Signatures of other repositories holding the same image stay.
	if old, ok := c.idx.Images[digest]; ok && len(old.Signatures) > 0 {
		merged := maps.Clone(old.Signatures)
		maps.Copy(merged, e.Signatures)
		e.Signatures = merged
	}
	c.idx.Images[digest] = e
	for _, k := range keys {
		c.idx.Refs[k] = ref
	}
	return c.saveLocked()
}

// touch records a use of digest for LRU order.
func (c *cache) touch(digest string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.idx.Images[digest]
	if !ok {
		return
	}
	e.LastUsed = c.now()
	c.dirty = true
	if c.now().Sub(c.lastSave) >= touchFlushInterval {
		c.saveLocked()
	}
}

// signatures returns the cached signatures of key ("repo@signed-digest")
// for image digest.
func (c *cache) signatures(digest, key string) []cachedSig {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.idx.Images[digest]; ok {
		return e.Signatures[key]
	}
	return nil
}

func (c *cache) setSignatures(digest string, sigs map[string][]cachedSig) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.idx.Images[digest]
	if !ok {
		return
	}
	if e.Signatures == nil {
		e.Signatures = map[string][]cachedSig{}
	}
	for k, s := range sigs {
		if s == nil {
			s = []cachedSig{}
		}
		e.Signatures[k] = s
	}
	c.saveLocked()
}

// dropLocked forgets an image, the references to it and its blobs that no
// other image or pull uses.
func (c *cache) dropLocked(digest string) {
	e, ok := c.idx.Images[digest]
	if !ok {
		return
	}
	delete(c.idx.Images, digest)
	for k, r := range c.idx.Refs {
		if r.Digest == digest {
			delete(c.idx.Refs, k)
		}
	}
	used := c.referencedLocked()
	for _, b := range e.allBlobs(digest) {
		if !used[b.Digest] && c.pending[b.Digest] == 0 {
			if p, err := c.blobPath(b.Digest); err == nil {
				os.Remove(p)
			}
		}
	}
	c.dirty = true
}

func (c *cache) removeOrphansLocked() {
	used := c.referencedLocked()
	ents, err := os.ReadDir(c.blobDir())
	if err != nil {
		return
	}
	for _, ent := range ents {
		d := "sha256:" + ent.Name()
		if !used[d] && c.pending[d] == 0 {
			os.RemoveAll(filepath.Join(c.blobDir(), ent.Name()))
		}
	}
}

// evict removes least recently used images that inUse does not name until
// the blobs take at most max bytes. It returns the evicted digests.
func (c *cache) evict(max int64, inUse map[string]bool) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	total := func() int64 {
		sizes := map[string]int64{}
		for d, e := range c.idx.Images {
			for _, b := range e.allBlobs(d) {
				sizes[b.Digest] = b.Size
			}
		}
		var n int64
		for _, s := range sizes {
			n += s
		}
		return n
	}
	if max <= 0 || total() <= max {
		return nil
	}
	var cands []string
	for d := range c.idx.Images {
		if !inUse[d] {
			cands = append(cands, d)
		}
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := c.idx.Images[cands[i]].LastUsed, c.idx.Images[cands[j]].LastUsed
		if a.Equal(b) {
			return cands[i] < cands[j]
		}
		return a.Before(b)
	})
	var evicted []string
	for _, d := range cands {
		if total() <= max {
			break
		}
		c.dropLocked(d)
		evicted = append(evicted, d)
	}
	c.removeOrphansLocked()
	c.saveLocked()
	return evicted
}
