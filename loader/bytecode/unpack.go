package bytecode

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// DefaultMaxUnpackedBytes bounds a layer's decompressed size when no other
// bound is set. Real objects are kilobytes to a few MiB; a layer that
// inflates past this is refused (a gzip bomb) before it costs more memory.
const DefaultMaxUnpackedBytes = 32 << 20

// maxTarEntries bounds the entries of a layer: a bytecode layer holds one
// file, perhaps with its directories.
const maxTarEntries = 64

// zstd frames may ask for windows of gigabytes; real layers use 8 MiB or
// less. The window is the decoder's memory.
const maxZstdWindow = 8 << 20

// errUnpackedTooLarge marks a layer that inflates past its bound.
var errUnpackedTooLarge = errors.New("unpacked size limit reached")

// limitedReader fails with errUnpackedTooLarge past max bytes and with the
// context's error once it is done, so neither a bomb nor a slow source
// outlives the request.
type limitedReader struct {
	ctx context.Context
	r   io.Reader
	n   int64 // bytes left
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if err := l.ctx.Err(); err != nil {
		return 0, err
	}
	if l.n <= 0 {
		// One byte more tells a layer of exactly max bytes from a bigger one.
		var one [1]byte
		if n, _ := l.r.Read(one[:]); n > 0 {
			return 0, errUnpackedTooLarge
		}
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// unpackObject decompresses a layer (tar, tar+gzip or tar+zstd, told by its
// first bytes as container runtimes do) and returns its object file: the
// one filename names (v1 labels) or else the only regular file. At most
// maxUnpacked bytes are decompressed.
func unpackObject(ctx context.Context, layer []byte, filename string, maxUnpacked int64) ([]byte, error) {
	if maxUnpacked <= 0 {
		maxUnpacked = DefaultMaxUnpackedBytes
	}
	var r io.Reader = bytes.NewReader(layer)
	switch {
	case bytes.HasPrefix(layer, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("layer is not valid gzip: %v", err)
		}
		defer zr.Close()
		r = zr
	case bytes.HasPrefix(layer, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(uint64(maxUnpacked)+1))
		if err != nil {
			return nil, fmt.Errorf("layer is not valid zstd: %v", err)
		}
		defer zr.Close()
		r = zr
	}
	obj, err := readObject(&limitedReader{ctx: ctx, r: r, n: maxUnpacked}, filename, maxUnpacked)
	switch {
	case errors.Is(err, zstd.ErrWindowSizeExceeded):
		return nil, fmt.Errorf("the layer's zstd frames ask for more than %d bytes of decoder window; recompress it with a smaller window", min(maxZstdWindow, maxUnpacked+1))
	case errors.Is(err, errUnpackedTooLarge), errors.Is(err, zstd.ErrDecoderSizeExceeded):
		return nil, fmt.Errorf("the layer unpacks to more than %d bytes, the node's limit (a bytecode layer holds one object of at most a few MiB; the limit is set with --image-max-unpacked-size)", maxUnpacked)
	case ctx.Err() != nil:
		return nil, ctx.Err()
	}
	return obj, err
}

// readObject reads the layer's tar stream. Anything but regular files and
// directories with plain relative names is refused: a layer that tries to
// reach outside itself, or links to anything, is hostile or broken.
func readObject(r io.Reader, filename string, maxUnpacked int64) ([]byte, error) {
	tr := tar.NewReader(r)
	var found []string
	var obj []byte
	for entries := 0; ; entries++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if errors.Is(err, errUnpackedTooLarge) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return nil, err
			}
			return nil, fmt.Errorf("layer is not a valid tar archive: %w", err)
		}
		if entries >= maxTarEntries {
			return nil, fmt.Errorf("layer holds more than %d entries; a bytecode layer holds one ELF object", maxTarEntries)
		}
		if err := checkEntryName(h.Name); err != nil {
			return nil, err
		}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old archives use TypeRegA
		case tar.TypeDir, tar.TypeXGlobalHeader:
			continue
		case tar.TypeSymlink:
			return nil, fmt.Errorf("layer entry %s is a symbolic link (to %s); a bytecode layer holds one regular file and no links", clip(h.Name), clip(h.Linkname))
		case tar.TypeLink:
			return nil, fmt.Errorf("layer entry %s is a hard link (to %s); a bytecode layer holds one regular file and no links", clip(h.Name), clip(h.Linkname))
		default:
			return nil, fmt.Errorf("layer entry %s is of tar type %q; a bytecode layer holds one regular file", clip(h.Name), string(h.Typeflag))
		}
		name := path.Clean("/" + h.Name)
		if filename != "" && path.Base(name) != path.Base(filename) {
			continue
		}
		found = append(found, name)
		if len(found) > 1 {
			continue
		}
		if h.Size > MaxObjectSize {
			return nil, fmt.Errorf("object %s is %d bytes, more than the %d allowed", clip(name), h.Size, MaxObjectSize)
		}
		// The declared size is refused before a byte is inflated, and what
		// is allocated is exactly what the object needs.
		if h.Size > maxUnpacked {
			return nil, errUnpackedTooLarge
		}
		obj = make([]byte, h.Size)
		if _, err = io.ReadFull(tr, obj); err != nil {
			if errors.Is(err, errUnpackedTooLarge) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return nil, err
			}
			return nil, fmt.Errorf("reading %s from layer: %w", clip(name), err)
		}
	}
	switch {
	case len(found) == 0 && filename != "":
		return nil, fmt.Errorf("layer holds no file %s (named by label %s)", clip(filename), LabelV1Filename)
	case len(found) == 0:
		return nil, fmt.Errorf("layer holds no file; it must hold the ELF object")
	case len(found) > 1:
		sort.Strings(found)
		return nil, fmt.Errorf("layer holds %d files (%s); a bytecode layer holds one ELF object", len(found), clipList(found))
	}
	return obj, nil
}

// checkEntryName refuses absolute names and names with ".." components.
func checkEntryName(name string) error {
	if strings.HasPrefix(name, "/") {
		return fmt.Errorf("layer entry %s has an absolute name; layer entries are relative to the image root", clip(name))
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return fmt.Errorf("layer entry %s climbs out of the layer with '..'", clip(name))
		}
	}
	return nil
}

// Names from an image are untrusted: they reach errors, hence events and
// logs, quoted and cut short.
const maxNameInError = 80

func clip(s string) string {
	if len(s) > maxNameInError {
		return fmt.Sprintf("%q…", s[:maxNameInError])
	}
	return fmt.Sprintf("%q", s)
}

// clipList quotes the first few names and counts the rest.
func clipList(names []string) string {
	const show = 8
	out := make([]string, 0, show+1)
	for i, n := range names {
		if i == show {
			out = append(out, fmt.Sprintf("and %d more", len(names)-show))
			break
		}
		out = append(out, clip(n))
	}
	return strings.Join(out, ", ")
}
