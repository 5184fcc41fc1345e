package bytecode

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// refNameAnnotation tags an image in an OCI layout's index.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// Layout fetches `oci:PATH[:TAG]` references from OCI image layouts on the
// local disk. Pull policies do not apply: the layout is the source.
type Layout struct{}

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
func (Layout) Fetch(ctx context.Context, req Request) (*Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, tag, err := SplitLayoutRef(req.Reference)
	if err != nil {
		return nil, fault.Wrap(fault.Invalid, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fault.Errorf(fault.NotFound, "image %q: no OCI layout at %s (index.json missing)", req.Reference, dir)
		}
		return nil, fault.Errorf(fault.Unavailable, "image %q: %v", req.Reference, err)
	}
	fp, fpErr := indexFingerprint(dir)
	if fpErr == nil {
		if im := layouts.get(req.Reference, fp); im != nil {
			return im, nil
		}
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: %s is not an OCI layout: %v", req.Reference, dir, err)
	}
	img, err := pickImage(p, tag)
	if err != nil {
		return nil, fault.Errorf(fault.NotFound, "image %q: %v", req.Reference, err)
	}
	im, err := FromImage(req.Reference, img)
	if err == nil && fpErr == nil {
		layouts.put(req.Reference, fp, im)
	}
	return im, err
}

// Reading a layout (index, manifest, config, decompressing the layer) costs
// about half a millisecond, most of a cached publish's own time. Blobs are
// content-addressed, so while index.json is unchanged the image is too:
// layouts remembers the last read per reference, keyed by the index's
// identity. Returned images are shared; callers must not modify them.
var layouts = &layoutCache{entries: map[string]layoutEntry{}}

const maxLayoutEntries = 64

type layoutEntry struct {
	fp  string
	img *Image
}

type layoutCache struct {
	mu      sync.Mutex
	entries map[string]layoutEntry
}

func (c *layoutCache) get(ref, fp string) *Image {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[ref]; ok && e.fp == fp {
		return e.img
	}
	return nil
}

func (c *layoutCache) put(ref, fp string, img *Image) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= maxLayoutEntries {
		for k := range c.entries { // drop one at random: a bound, not a policy
			delete(c.entries, k)
			break
		}
	}
	c.entries[ref] = layoutEntry{fp: fp, img: img}
}

// indexFingerprint identifies the current index.json: a rewrite (even in
// place, same size) changes its inode, ctime or size.
func indexFingerprint(dir string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, "index.json"), &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d:%d:%d:%d.%d:%d.%d", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec), nil
}

func pickImage(p layout.Path, tag string) (v1.Image, error) {
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var tags []string
	for _, d := range m.Manifests {
		name := d.Annotations[refNameAnnotation]
		tags = append(tags, name)
		if tag == "" && len(m.Manifests) == 1 || tag != "" && name == tag {
			return idx.Image(d.Digest)
		}
	}
	if tag == "" {
		return nil, fmt.Errorf("the layout holds %d images; name one with :TAG (tags: %s)", len(m.Manifests), strings.Join(tags, ", "))
	}
	return nil, fmt.Errorf("the layout has no image tagged %q (tags: %s)", tag, strings.Join(tags, ", "))
}
