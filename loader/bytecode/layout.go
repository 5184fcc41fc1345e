package bytecode

import (
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// refNameAnnotation tags an image in an OCI layout's index.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// Layout fetches `oci:PATH[:TAG]` references from OCI image layouts on the
// local disk. Pull policies do not apply: the layout is the source.
//
// A layout is read as warily as a registry: only regular files, never
// through a symbolic link, each within the size its descriptor declares
// and a hard cap, each blob checked against its digest before use, and
// every read within the request's deadline.
type Layout struct {
	// MaxUnpackedBytes bounds the layer's decompressed size
	// (0: DefaultMaxUnpackedBytes).
	MaxUnpackedBytes int64
}

// SplitLayoutRef splits `oci:PATH[:TAG]` into PATH and TAG. PATH must be
// absolute; a TAG is a colon after the last slash.
func SplitLayoutRef(ref string) (dir, tag string, err error) {
	rest, ok := strings.CutPrefix(ref, LayoutScheme)
	if !ok {
		return "", "", fmt.Errorf("%q is not a local layout reference (oci:PATH[:TAG])", ref)
	}
	dir = rest
	if i := strings.LastIndex(rest, ":"); i > strings.LastIndex(rest, "/") {
		dir, tag = rest[:i], rest[i+1:]
		if tag == "" {
			return "", "", fmt.Errorf("%q has an empty tag after ':'", ref)
		}
	}
	if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
		return "", "", fmt.Errorf("%q: the layout path must be absolute and clean, like oci:/srv/bytecode/xdp-counter:v1", ref)
	}
	return dir, tag, nil
}

// Fetch reads the image from the layout. With no tag, the layout must hold
// exactly one image.
func (l Layout) Fetch(ctx context.Context, req Request) (*Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, fault.Errorf(fault.Canceled, "image %q: %w", req.Reference, err)
	}
	maxUnpacked := l.MaxUnpackedBytes
	if maxUnpacked <= 0 || maxUnpacked > maxUnpackedLimit {
		maxUnpacked = DefaultMaxUnpackedBytes
	}
	dir, tag, err := SplitLayoutRef(req.Reference)
	if err != nil {
		return nil, fault.Wrap(fault.Invalid, err)
	}
	ld, err := openLayoutDir(req.Reference, dir)
	if err != nil {
		return nil, err
	}
	defer ld.close()
	raw, fp, err := ld.read(ctx, "index.json", "the layout's index.json", -1, maxManifestSize)
	if err != nil {
		return nil, err
	}
	if im := layouts.get(req.Reference, fp); im != nil {
		return im, nil
	}
	im, err := ld.image(ctx, raw, tag, maxUnpacked)
	if err != nil {
		return nil, err
	}
	layouts.put(req.Reference, fp, im)
	return im, nil
}

// layoutDir is an open layout directory; files are opened beneath it.
type layoutDir struct {
	ref string
	dir string
	fd  int
}

func openLayoutDir(ref, dir string) (*layoutDir, error) {
	// O_NONBLOCK: a FIFO in the path must not hold the request.
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT):
			return nil, fault.Errorf(fault.NotFound, "image %q: no OCI layout at %s (no such directory)", ref, dir)
		case errors.Is(err, unix.ENOTDIR):
			return nil, fault.Errorf(fault.Invalid, "image %q: %s is not a directory: an oci: reference names an OCI image layout directory (with index.json and blobs/)", ref, dir)
		}
		return nil, layoutIOError(ref, dir, err)
	}
	return &layoutDir{ref: ref, dir: dir, fd: fd}, nil
}

func (d *layoutDir) close() { unix.Close(d.fd) }

// layoutIOError classifies an error reading a layout: a transient I/O
// error may clear; anything else is a property of the layout or the node
// that a retry cannot change.
func layoutIOError(ref, p string, err error) error {
	switch {
	case errors.Is(err, unix.EIO), errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOMEM), errors.Is(err, unix.ENFILE), errors.Is(err, unix.EMFILE):
		return fault.Errorf(fault.Unavailable, "image %q: reading %s: %v; retry later", ref, p, err)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return fault.Errorf(fault.Precondition, "image %q: the driver may not read %s (%v): make the layout readable by the driver", ref, p, err)
	}
	return fault.Errorf(fault.Invalid, "image %q: cannot read %s: %v", ref, p, err)
}

// read returns a file of the layout after checking that it is a regular
// file reached without symbolic links, of size want (if not negative) and
// at most max bytes. It also returns the file's identity, which changes
// when the file is replaced or rewritten.
func (d *layoutDir) read(ctx context.Context, rel, what string, want, max int64) ([]byte, string, error) {
	p := filepath.Join(d.dir, rel)
	fd, err := unix.Openat2(d.fd, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOSYS) {
		fd, err = unix.Openat(d.fd, rel, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	}
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT):
			return nil, "", fault.Errorf(fault.NotFound, "image %q: %s (%s) does not exist: this is not a complete OCI layout", d.ref, what, p)
		case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
			return nil, "", fault.Errorf(fault.Invalid, "image %q: %s (%s) is a symbolic link or reached through one; a layout must hold regular files", d.ref, what, p)
		case errors.Is(err, unix.ENOTDIR):
			return nil, "", fault.Errorf(fault.Invalid, "image %q: %s (%s) is not in a directory: this is not an OCI layout", d.ref, what, p)
		}
		return nil, "", layoutIOError(d.ref, p, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, "", layoutIOError(d.ref, p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, "", fault.Errorf(fault.Invalid, "image %q: %s (%s) is %s, not a regular file; a layout must hold regular files", d.ref, what, p, fileKind(st.Mode))
	}
	if st.Size > max {
		return nil, "", fault.Errorf(fault.Invalid, "image %q: %s (%s) is %d bytes, more than the %d allowed", d.ref, what, p, st.Size, max)
	}
	if want >= 0 && st.Size != want {
		return nil, "", fault.Errorf(fault.Invalid, "image %q: %s (%s) is %d bytes but its descriptor says %d: the layout is damaged", d.ref, what, p, st.Size, want)
	}
	fp := fmt.Sprintf("%d:%d:%d:%d.%d:%d.%d", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
	buf := make([]byte, st.Size)
	const chunk = 1 << 20
	for off := 0; off < len(buf); {
		// Between chunks the request's deadline is checked: a slow disk or
		// network file system cannot hold the request past it.
		if err := ctx.Err(); err != nil {
			return nil, "", fault.Errorf(fault.Canceled, "image %q: reading %s: %w", d.ref, p, err)
		}
		end := min(off+chunk, len(buf))
		n, err := unix.Pread(fd, buf[off:end], int64(off))
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return nil, "", layoutIOError(d.ref, p, err)
		}
		if n == 0 {
			return nil, "", fault.Errorf(fault.Unavailable, "image %q: %s (%s) shrank while being read; retry", d.ref, what, p)
		}
		off += n
	}
	return buf, fp, nil
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFLNK:
		return "a symbolic link"
	}
	return "not a regular file"
}

// blob reads the blob a descriptor names and checks its digest.
func (d *layoutDir) blob(ctx context.Context, desc v1.Descriptor, what string, max int64) ([]byte, error) {
	if desc.Digest.Algorithm != "sha256" || len(desc.Digest.Hex) != 64 || !hexDigestRE.MatchString(desc.Digest.String()) {
		return nil, fault.Errorf(fault.Invalid, "image %q: %s has digest %s; only sha256 digests are supported", d.ref, what, clip(desc.Digest.String()))
	}
	if desc.Size < 0 || desc.Size > max {
		return nil, fault.Errorf(fault.Invalid, "image %q: %s is %d bytes by its descriptor, more than the %d allowed", d.ref, what, desc.Size, max)
	}
	data, _, err := d.read(ctx, filepath.Join("blobs", "sha256", desc.Digest.Hex), what, desc.Size, max)
	if err != nil {
		return nil, err
	}
	if digestOf(data) != desc.Digest.String() {
		return nil, fault.Errorf(fault.Invalid, "image %q: %s (blobs/sha256/%s) does not match its digest: the layout is damaged or was tampered with; rebuild it", d.ref, what, desc.Digest.Hex)
	}
	return data, nil
}

// maxIndexDepth bounds indexes nested in indexes (a multi-platform index
// in a layout's index.json is one level).
const maxIndexDepth = 2

// image picks the tagged image from index.json and reads it.
func (d *layoutDir) image(ctx context.Context, indexJSON []byte, tag string, maxUnpacked int64) (*Image, error) {
	idx, err := parseIndex(indexJSON)
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: index.json is not an OCI image index: %v", d.ref, err)
	}
	desc, err := pickTagged(idx, tag)
	if err != nil {
		return nil, fault.Errorf(fault.NotFound, "image %q: %v", d.ref, err)
	}
	for depth := 0; desc.MediaType.IsIndex(); depth++ {
		if depth == maxIndexDepth {
			return nil, fault.Errorf(fault.Invalid, "image %q: indexes nest more than %d deep", d.ref, maxIndexDepth)
		}
		raw, err := d.blob(ctx, desc, "an image index", maxManifestSize)
		if err != nil {
			return nil, err
		}
		child, err := parseIndex(raw)
		if err != nil {
			return nil, fault.Errorf(fault.Invalid, "image %q: index %s is malformed: %v", d.ref, desc.Digest, err)
		}
		pick, err := pickPlatform(d.ref, child)
		if err != nil {
			return nil, err
		}
		desc = *pick
	}
	if !desc.MediaType.IsImage() {
		return nil, fault.Errorf(fault.Invalid, "image %q: the layout's entry is a %s, not an image manifest: a bytecode image is one OCI image with one layer", d.ref, clip(string(desc.MediaType)))
	}
	raw, err := d.blob(ctx, desc, "the image manifest", maxManifestSize)
	if err != nil {
		return nil, err
	}
	var m v1.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: the manifest is not JSON: %v", d.ref, err)
	}
	if err := checkManifest(d.ref, desc.MediaType, &m, maxUnpacked); err != nil {
		return nil, err
	}
	p := imageParts{digest: desc.Digest.String(), manifest: &m}
	if p.config, err = d.blob(ctx, m.Config, "the image config", maxConfigSize); err != nil {
		return nil, err
	}
	if p.layer, err = d.blob(ctx, m.Layers[0], "the image layer", layerSizeLimit(maxUnpacked)); err != nil {
		return nil, err
	}
	return decode(ctx, d.ref, p, maxUnpacked)
}

func parseIndex(raw []byte) (*v1.IndexManifest, error) {
	var idx v1.IndexManifest
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("not JSON: %v", err)
	}
	if idx.SchemaVersion != 2 {
		return nil, fmt.Errorf("schemaVersion is %d, not 2", idx.SchemaVersion)
	}
	if idx.MediaType != "" && idx.MediaType != types.OCIImageIndex && idx.MediaType != types.DockerManifestList {
		return nil, fmt.Errorf("its media type is %s, not an image index", clip(string(idx.MediaType)))
	}
	return &idx, nil
}

func pickTagged(idx *v1.IndexManifest, tag string) (v1.Descriptor, error) {
	var tags []string
	for _, d := range idx.Manifests {
		name := d.Annotations[refNameAnnotation]
		tags = append(tags, name)
		if tag == "" && len(idx.Manifests) == 1 || tag != "" && name == tag {
			return d, nil
		}
	}
	if tag == "" {
		return v1.Descriptor{}, fmt.Errorf("the layout holds %d images; name one with :TAG (tags: %s)", len(idx.Manifests), clipList(tags))
	}
	return v1.Descriptor{}, fmt.Errorf("the layout has no image tagged %s (tags: %s)", clip(tag), clipList(tags))
}

// Reading a layout (index, manifest, config, decompressing the layer) costs
// about half a millisecond, most of a cached publish's own time. Blobs are
// content-addressed, so while index.json is unchanged the image is too:
// layouts remembers recent reads, keyed by reference and the index's
// identity, within a bound in bytes. Returned images are shared; callers
// must not modify them.
var layouts = newLayoutCache(maxLayoutCacheBytes)

// maxLayoutCacheBytes bounds the objects the layout cache holds.
const maxLayoutCacheBytes = 32 << 20

type layoutEntry struct {
	ref string
	fp  string
	img *Image
}

type layoutCache struct {
	mu      sync.Mutex
	max     int64
	size    int64
	order   *list.List // of *layoutEntry, most recently used first
	entries map[string]*list.Element
}

func newLayoutCache(max int64) *layoutCache {
	return &layoutCache{max: max, order: list.New(), entries: map[string]*list.Element{}}
}

func (c *layoutCache) get(ref, fp string) *Image {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[ref]
	if !ok {
		return nil
	}
	e := el.Value.(*layoutEntry)
	if e.fp != fp {
		c.removeLocked(el)
		return nil
	}
	c.order.MoveToFront(el)
	return e.img
}

func (c *layoutCache) put(ref, fp string, img *Image) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[ref]; ok {
		c.removeLocked(el)
	}
	n := int64(len(img.Object))
	if n > c.max/4 {
		// One large object would push out all others for a single hit.
		return
	}
	for c.size+n > c.max && c.order.Len() > 0 {
		c.removeLocked(c.order.Back())
	}
	c.entries[ref] = c.order.PushFront(&layoutEntry{ref: ref, fp: fp, img: img})
	c.size += n
}

func (c *layoutCache) removeLocked(el *list.Element) {
	e := c.order.Remove(el).(*layoutEntry)
	delete(c.entries, e.ref)
	c.size -= int64(len(e.img.Object))
}

// bytes reports the objects' total size.
func (c *layoutCache) bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}
