package bytecode

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// Hostile input: each case is refused with the right kind and a message
// that says what is wrong, within bounded time and memory, and leaves
// nothing cached.

// layoutOf writes img to a fresh layout and returns its reference.
func layoutOf(t *testing.T, img v1.Image) (ref, dir string) {
	t.Helper()
	dir = t.TempDir()
	if err := WriteLayout(dir, "v1", img); err != nil {
		t.Fatal(err)
	}
	return LayoutScheme + dir + ":v1", dir
}

// imageWithLayer makes a v2-labelled image around a raw layer.
func imageWithLayer(t *testing.T, layer []byte, mt types.MediaType, labels map[string]string) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, static.NewLayer(layer, mt))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Config.Labels = labels
	return mutateConfig(t, img, cfg)
}

func imageWithObject(t *testing.T, obj []byte) v1.Image {
	return imageWithLayer(t, tarOf(t, map[string][]byte{"prog.o": obj}), types.OCIUncompressedLayer, v2Labels)
}

// fetchLayout fetches through a Registry, as the daemon does, and checks
// that the cache holds nothing afterwards.
func fetchLayout(t *testing.T, ref string, opts RegistryOptions) (*Image, error) {
	t.Helper()
	dir := t.TempDir()
	opts.CacheDir = dir
	r := newReg(t, opts)
	im, err := r.Fetch(ctxT(t), Request{Reference: ref})
	if files := blobFiles(t, dir); len(files) != 0 {
		t.Errorf("the cache holds %v after fetching a local layout", files)
	}
	return im, err
}

func TestHostileObjects(t *testing.T) {
	good := testObject(t)
	patch := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, c := range []struct {
		name string
		obj  []byte
		want []string
	}{
		{"truncated ELF", good[:len(good)/3], []string{"ELF"}},
		{"ELF header only", good[:elf.EI_NIDENT+4], []string{"ELF"}},
		{"not ELF", []byte("#!/bin/sh\necho this is not an eBPF object\n"), []string{"not an ELF object"}},
		{"empty", []byte{}, []string{"not an ELF object"}},
		{"wrong byte order", patch(func(b []byte) []byte {
			b[elf.EI_DATA] = byte(elf.ELFDATA2MSB + elf.ELFDATA2LSB - hostByteOrder)
			return b
		}), []string{"byte order"}},
		{"wrong machine", patch(func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[18:], uint16(elf.EM_X86_64))
			return b
		}), []string{"machine", "EM_X86_64"}},
		{"32-bit", patch(func(b []byte) []byte { b[elf.EI_CLASS] = byte(elf.ELFCLASS32); return b }), []string{"ELFCLASS32"}},
		{"garbled section headers", patch(func(b []byte) []byte {
			// e_shoff points past the end of the file.
			binary.LittleEndian.PutUint64(b[0x28:], uint64(len(b))*4)
			return b
		}), []string{"ELF"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if hostByteOrder != elf.ELFDATA2LSB {
				t.Skip("the test object is little-endian")
			}
			ref, _ := layoutOf(t, imageWithObject(t, c.obj))
			_, err := fetchLayout(t, ref, RegistryOptions{})
			wantKind(t, err, fault.Invalid, append([]string{ref}, c.want...)...)
		})
	}
}

func TestHostileLabels(t *testing.T) {
	// The labels name a program the object does not have.
	ref, _ := layoutOf(t, imageWithLayer(t, tarOf(t, map[string][]byte{"prog.o": testObject(t)}), types.OCIUncompressedLayer,
		map[string]string{LabelPrograms: `{"no_such_program":"xdp"}`}))
	_, err := fetchLayout(t, ref, RegistryOptions{})
	wantKind(t, err, fault.Invalid, "no_such_program", "xdp_stats")

	// Labels listing thousands of programs.
	var many []string
	for i := 0; i < 5000; i++ {
		many = append(many, fmt.Sprintf(`"p%d":"xdp"`, i))
	}
	ref, _ = layoutOf(t, imageWithLayer(t, tarOf(t, map[string][]byte{"prog.o": testObject(t)}), types.OCIUncompressedLayer,
		map[string]string{LabelPrograms: "{" + strings.Join(many, ",") + "}"}))
	_, err = fetchLayout(t, ref, RegistryOptions{})
	wantKind(t, err, fault.Invalid, "5000 names")
	if len(err.Error()) > 1024 {
		t.Errorf("error is %d bytes", len(err.Error()))
	}

	// Hostile names never reach an error unbounded.
	long := strings.Repeat("a", 120)
	ref, _ = layoutOf(t, imageWithLayer(t, tarOf(t, map[string][]byte{"prog.o": testObject(t)}), types.OCIUncompressedLayer,
		map[string]string{LabelPrograms: fmt.Sprintf(`{%q:"xdp"}`, long)}))
	_, err = fetchLayout(t, ref, RegistryOptions{})
	wantKind(t, err, fault.Invalid)
	if strings.Contains(err.Error(), long) {
		t.Errorf("error quotes a %d-byte name whole", len(long))
	}
}

// tarWith writes entries as given, links and all.
func tarWith(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		data := []byte(nil)
		if h.Typeflag == tar.TypeReg {
			data = testObject(t)
			h.Size = int64(len(data))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestHostileTarEntries(t *testing.T) {
	reg := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeReg} }
	for _, c := range []struct {
		name  string
		layer []byte
		want  []string
	}{
		{"dot-dot", tarWith(t, reg("../../etc/prog.o")), []string{"..", "climbs out"}},
		{"dot-dot inside", tarWith(t, reg("bpf/../../prog.o")), []string{"climbs out"}},
		{"absolute", tarWith(t, reg("/etc/prog.o")), []string{"absolute"}},
		{"symlink", tarWith(t, &tar.Header{Name: "prog.o", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}), []string{"symbolic link", "/etc/shadow"}},
		{"symlink beside the object", tarWith(t, reg("prog.o"), &tar.Header{Name: "link.o", Typeflag: tar.TypeSymlink, Linkname: "prog.o"}), []string{"symbolic link"}},
		{"hard link", tarWith(t, reg("prog.o"), &tar.Header{Name: "other.o", Typeflag: tar.TypeLink, Linkname: "prog.o"}), []string{"hard link"}},
		{"device", tarWith(t, &tar.Header{Name: "zero", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 5}), []string{"tar type"}},
		{"fifo", tarWith(t, &tar.Header{Name: "fifo", Typeflag: tar.TypeFifo}), []string{"tar type"}},
		{"two files", tarWith(t, reg("a.o"), reg("b.o")), []string{"2 files"}},
		{"not a tar", []byte(strings.Repeat("garbage ", 200)), []string{"tar"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ref, _ := layoutOf(t, imageWithLayer(t, c.layer, types.OCIUncompressedLayer, v2Labels))
			_, err := fetchLayout(t, ref, RegistryOptions{})
			wantKind(t, err, fault.Invalid, c.want...)
		})
	}
	// Directories and a nested path are fine.
	ref, _ := layoutOf(t, imageWithLayer(t, tarWith(t, &tar.Header{Name: "bpf/", Typeflag: tar.TypeDir, Mode: 0o755}, reg("bpf/prog.o")), types.OCIUncompressedLayer, v2Labels))
	if _, err := fetchLayout(t, ref, RegistryOptions{}); err != nil {
		t.Fatalf("a layer with a directory and bpf/prog.o: %v", err)
	}
}

// gzipBomb returns a gzip stream (many members of one compressed block of
// zeros) that inflates to a tar entry of declared bytes followed by total
// bytes of zeros, at a tiny fraction of that size.
func gzipBomb(t *testing.T, declared, total int64) []byte {
	t.Helper()
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	tw.WriteHeader(&tar.Header{Name: "prog.o", Typeflag: tar.TypeReg, Mode: 0o644, Size: declared})
	tw.Flush()
	const block = 16 << 20
	zeros := gzipOf(t, make([]byte, block))
	out := gzipOf(t, hdr.Bytes())
	for n := int64(0); n < total; n += block {
		out = append(out, zeros...)
	}
	return out
}

func TestGzipBomb(t *testing.T) {
	// A 1 GiB bomb of a few hundred KiB: refused at the default bound, with
	// bounded memory.
	bomb := gzipBomb(t, MaxObjectSize-1<<20, 1<<30)
	if len(bomb) > 2<<20 {
		t.Fatalf("bomb is %d bytes", len(bomb))
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := unpackObject(context.Background(), bomb, "", 0)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "unpacks to more than") || !strings.Contains(err.Error(), "--image-max-unpacked-size") {
		t.Fatalf("got %v, want the unpacked-size refusal", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4*DefaultMaxUnpackedBytes {
		t.Errorf("refusing the bomb allocated %d MiB", alloc>>20)
	}

	// Through a layout and a registry with a lower bound, as the daemon's
	// flag sets it: Invalid, nothing cached.
	small := gzipBomb(t, 8<<20, 8<<20)
	ref, _ := layoutOf(t, imageWithLayer(t, small, types.OCILayer, v2Labels))
	_, err = fetchLayout(t, ref, RegistryOptions{MaxUnpackedBytes: 4 << 20})
	wantKind(t, err, fault.Invalid, "unpacks to more than 4194304 bytes")

	ts := newTestServer(t)
	ts.push(t, "bpf/bomb:v1", imageWithLayer(t, small, types.OCILayer, v2Labels))
	dir := t.TempDir()
	r := newReg(t, RegistryOptions{CacheDir: dir, MaxUnpackedBytes: 4 << 20})
	_, err = r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/bomb:v1")})
	wantKind(t, err, fault.Invalid, "unpacks to more than")
	if files := blobFiles(t, dir); len(files) != 0 {
		t.Errorf("a refused bomb left %v in the cache", files)
	}

	// The stream itself is bounded too, whatever the headers say.
	lr := &limitedReader{ctx: context.Background(), r: bytes.NewReader(make([]byte, 10)), n: 5}
	if b, err := io.ReadAll(lr); len(b) != 5 || err != errUnpackedTooLarge {
		t.Errorf("limited reader: %d bytes, %v", len(b), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := unpackObject(ctx, gzipOf(t, tarOf(t, map[string][]byte{"a.o": testObject(t)})), "", 0); err != context.Canceled {
		t.Errorf("unpacking under a cancelled context: %v", err)
	}

	// The bound is checked when the registry is made.
	for _, n := range []int64{-1, maxUnpackedLimit + 1} {
		if _, err := NewRegistry(RegistryOptions{CacheDir: t.TempDir(), MaxUnpackedBytes: n}); err == nil {
			t.Errorf("MaxUnpackedBytes %d accepted", n)
		}
	}
}

func TestTwoLayersInLayout(t *testing.T) {
	two := appendLayer(t, buildTest(t, "a.o"), tarOf(t, map[string][]byte{"extra": []byte("x")}))
	ref, _ := layoutOf(t, two)
	_, err := fetchLayout(t, ref, RegistryOptions{})
	wantKind(t, err, fault.Invalid, "2 layers")
}

// layoutFiles returns the paths of a one-image layout's manifest, config
// and layer blobs.
func layoutFiles(t *testing.T, dir string, img v1.Image) (manifest, config, layer string) {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	blob := func(h v1.Hash) string { return filepath.Join(dir, "blobs", "sha256", h.Hex) }
	d, _ := img.Digest()
	return blob(d), blob(m.Config.Digest), blob(m.Layers[0].Digest)
}

func TestHostileLayouts(t *testing.T) {
	img := buildTest(t, "a.o")
	fresh := func(t *testing.T) (ref, dir, manifest, config, layer string) {
		ref, dir = layoutOf(t, img)
		manifest, config, layer = layoutFiles(t, dir, img)
		return
	}
	replace := func(t *testing.T, path string, f func(path string) error) {
		t.Helper()
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := f(path); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name  string
		setup func(t *testing.T, dir, manifest, config, layer string)
		kind  fault.Kind
		want  []string
	}{
		{"index.json is a FIFO", func(t *testing.T, dir, _, _, _ string) {
			replace(t, filepath.Join(dir, "index.json"), func(p string) error { return syscall.Mkfifo(p, 0o644) })
		}, fault.Invalid, []string{"index.json", "FIFO"}},
		{"index.json is a symlink to /dev/zero", func(t *testing.T, dir, _, _, _ string) {
			replace(t, filepath.Join(dir, "index.json"), func(p string) error { return os.Symlink("/dev/zero", p) })
		}, fault.Invalid, []string{"symbolic link"}},
		{"index.json is a directory", func(t *testing.T, dir, _, _, _ string) {
			replace(t, filepath.Join(dir, "index.json"), func(p string) error { return os.Mkdir(p, 0o755) })
		}, fault.Invalid, []string{"a directory"}},
		{"index.json is huge and sparse", func(t *testing.T, dir, _, _, _ string) {
			os.Truncate(filepath.Join(dir, "index.json"), 64<<30)
		}, fault.Invalid, []string{"index.json", "more than"}},
		{"index.json is not JSON", func(t *testing.T, dir, _, _, _ string) {
			os.WriteFile(filepath.Join(dir, "index.json"), []byte("<html>"), 0o644)
		}, fault.Invalid, []string{"not JSON"}},
		{"index.json has the wrong media type", func(t *testing.T, dir, _, _, _ string) {
			rewriteIndex(t, dir, func(m map[string]any) { m["mediaType"] = "application/vnd.oci.image.manifest.v1+json" })
		}, fault.Invalid, []string{"not an image index"}},
		{"index entry has the wrong media type", func(t *testing.T, dir, _, _, _ string) {
			rewriteIndex(t, dir, func(m map[string]any) {
				m["manifests"].([]any)[0].(map[string]any)["mediaType"] = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
			})
		}, fault.Invalid, []string{"helm", "not an image manifest"}},
		{"index.json missing", func(t *testing.T, dir, _, _, _ string) {
			os.Remove(filepath.Join(dir, "index.json"))
		}, fault.NotFound, []string{"index.json", "does not exist"}},
		{"config is a 64 GiB sparse file", func(t *testing.T, _, _, config, _ string) {
			os.Truncate(config, 64<<30)
		}, fault.Invalid, []string{"config", "more than"}},
		{"layer is a symlink to /dev/zero", func(t *testing.T, _, _, _, layer string) {
			replace(t, layer, func(p string) error { return os.Symlink("/dev/zero", p) })
		}, fault.Invalid, []string{"layer", "symbolic link"}},
		{"layer is a FIFO", func(t *testing.T, _, _, _, layer string) {
			replace(t, layer, func(p string) error { return syscall.Mkfifo(p, 0o644) })
		}, fault.Invalid, []string{"layer", "FIFO"}},
		{"blobs is a symlink", func(t *testing.T, dir, _, _, _ string) {
			other := t.TempDir()
			os.Rename(filepath.Join(dir, "blobs"), filepath.Join(other, "blobs"))
			os.Symlink(filepath.Join(other, "blobs"), filepath.Join(dir, "blobs"))
		}, fault.Invalid, []string{"symbolic link"}},
		{"layer does not match its digest", func(t *testing.T, _, _, _, layer string) {
			b, _ := os.ReadFile(layer)
			b[len(b)/2] ^= 0xff
			os.WriteFile(layer, b, 0o644)
		}, fault.Invalid, []string{"layer", "does not match its digest"}},
		{"manifest does not match its digest", func(t *testing.T, _, manifest, _, _ string) {
			b, _ := os.ReadFile(manifest)
			os.WriteFile(manifest, bytes.Replace(b, []byte(`"schemaVersion":2`), []byte(`"schemaVersion":3`), 1), 0o644)
		}, fault.Invalid, []string{"manifest", "does not match its digest"}},
		{"manifest is not JSON", func(t *testing.T, dir, manifest, _, _ string) {
			setManifest(t, dir, []byte("not json at all"), "")
		}, fault.Invalid, []string{"manifest is not JSON"}},
		{"manifest's config has the wrong media type", func(t *testing.T, dir, manifest, _, _ string) {
			b, _ := os.ReadFile(manifest)
			setManifest(t, dir, bytes.Replace(b, []byte(types.OCIConfigJSON), []byte("application/vnd.cncf.helm.config.v1+json"), 1), "")
		}, fault.Invalid, []string{"config", "helm"}},
		{"manifest says another media type than its descriptor", func(t *testing.T, dir, manifest, _, _ string) {
			b, _ := os.ReadFile(manifest)
			setManifest(t, dir, b, types.DockerManifestSchema2)
		}, fault.Invalid, []string{"served as"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ref, dir, manifest, config, layer := fresh(t)
			c.setup(t, dir, manifest, config, layer)
			start := time.Now()
			_, err := fetchLayout(t, ref, RegistryOptions{})
			wantKind(t, err, c.kind, c.want...)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("refusing took %v", d)
			}
		})
	}
}

// rewriteIndex edits a layout's index.json as generic JSON.
func rewriteIndex(t *testing.T, dir string, f func(map[string]any)) {
	t.Helper()
	p := filepath.Join(dir, "index.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// setManifest stores raw as the layout's manifest under its true digest
// and points index.json at it (with media type mt, if given).
func setManifest(t *testing.T, dir string, raw []byte, mt types.MediaType) {
	t.Helper()
	d := digestOf(raw)
	if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(d, "sha256:")), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	rewriteIndex(t, dir, func(m map[string]any) {
		e := m["manifests"].([]any)[0].(map[string]any)
		e["digest"], e["size"] = d, len(raw)
		if mt != "" {
			e["mediaType"] = string(mt)
		}
	})
}

func TestLayoutPermanentErrors(t *testing.T) {
	for _, c := range []struct {
		ref  string
		kind fault.Kind
		want string
	}{
		{"oci:/etc/passwd", fault.Invalid, "not a directory"},
		{"oci:/etc/passwd:v1", fault.Invalid, "not a directory"},
		{"oci:/etc", fault.NotFound, "index.json"},
		{"oci:/nonexistent/layout", fault.NotFound, "no such directory"},
		{"oci:relative/path", fault.Invalid, "absolute"},
	} {
		_, err := fetchLayout(t, c.ref, RegistryOptions{})
		wantKind(t, err, c.kind, c.want)
	}
}

func TestLayoutHonoursDeadline(t *testing.T) {
	ref, _ := layoutOf(t, buildTest(t, "deadline.o"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Layout{}.Fetch(ctx, Request{Reference: ref})
	wantKind(t, err, fault.Canceled)
	// A damaged layer is not remembered: the layout is read again, and
	// refused again, each time.
	ref, dir := layoutOf(t, buildTest(t, "damaged.o"))
	_, _, layer := layoutFiles(t, dir, buildTest(t, "damaged.o"))
	b, _ := os.ReadFile(layer)
	b[len(b)-1] ^= 1
	os.WriteFile(layer, b, 0o644)
	for i := 0; i < 2; i++ {
		_, err := Layout{}.Fetch(ctxT(t), Request{Reference: ref})
		wantKind(t, err, fault.Invalid, "does not match its digest")
	}
}

func TestLayoutCacheBoundedByBytes(t *testing.T) {
	c := newLayoutCache(1000)
	for i := 0; i < 50; i++ {
		c.put(fmt.Sprint("ref", i), "fp", &Image{Object: make([]byte, 100+i)})
		if c.bytes() > 1000 {
			t.Fatalf("after %d puts the cache holds %d bytes, bound 1000", i+1, c.bytes())
		}
	}
	if c.get("ref49", "fp") == nil {
		t.Error("the most recent entry was evicted")
	}
	if c.get("ref0", "fp") != nil {
		t.Error("the oldest entry survived 50 puts")
	}
	if c.get("ref49", "other") != nil {
		t.Error("a changed index.json still hits")
	}
	c.put("big", "fp", &Image{Object: make([]byte, 600)})
	if c.get("big", "fp") != nil {
		t.Error("an object larger than a quarter of the bound was cached")
	}

	// The package cache, through real layouts, stays within its bound.
	obj := append(testObject(t), make([]byte, 6<<20)...) // trailing bytes do not disturb ELF
	for i := 0; i < 8; i++ {
		img, err := Build(obj, fmt.Sprintf("big%d.o", i), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := layoutOf(t, img)
		if _, err := (Layout{}).Fetch(ctxT(t), Request{Reference: ref}); err != nil {
			t.Fatal(err)
		}
		if n := layouts.bytes(); n > maxLayoutCacheBytes {
			t.Fatalf("after %d layouts the layout cache holds %d bytes, bound %d", i+1, n, maxLayoutCacheBytes)
		}
	}
}

// A registry that answers manifests with an endless stream, or drips them.
func TestEndlessManifest(t *testing.T) {
	for _, c := range []struct {
		name   string
		handle func(w http.ResponseWriter, r *http.Request)
		kind   fault.Kind
		want   string
	}{
		{"endless", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
			w.WriteHeader(http.StatusOK)
			chunk := bytes.Repeat([]byte(" "), 64<<10)
			for r.Context().Err() == nil {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}, fault.Invalid, "larger than"},
		{"declared huge", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", string(types.OCIImageIndex))
			w.Header().Set("Content-Length", fmt.Sprint(1<<40))
			w.WriteHeader(http.StatusOK)
			w.Write([]byte("{"))
		}, fault.Invalid, "larger than"},
		{"drip", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
			w.WriteHeader(http.StatusOK)
			for r.Context().Err() == nil {
				if _, err := w.Write([]byte(" ")); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				time.Sleep(50 * time.Millisecond)
			}
		}, fault.Unavailable, "did not send the manifest within"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.URL.Path, "/manifests/") {
					c.handle(w, r)
					return
				}
				w.WriteHeader(http.StatusOK) // the /v2/ ping
			}))
			t.Cleanup(srv.Close)
			dir := t.TempDir()
			r := newReg(t, RegistryOptions{CacheDir: dir})
			if c.kind == fault.Unavailable {
				r.manifestTimeout = 500 * time.Millisecond
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			_, err := r.Fetch(ctxT(t), Request{Reference: strings.TrimPrefix(srv.URL, "http://") + "/bpf/endless:v1"})
			runtime.ReadMemStats(&after)
			wantKind(t, err, c.kind, c.want)
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("cut off after %v", d)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
				t.Errorf("fetching allocated %d MiB", alloc>>20)
			}
			if files := blobFiles(t, dir); len(files) != 0 {
				t.Errorf("cache holds %v", files)
			}
		})
	}
}

// Registries serve blobs through redirects to other hosts and paths: the
// manifest bounds must not apply to them.
func TestRedirectedBlobsAreNotManifests(t *testing.T) {
	ts := newTestServer(t)
	inner := ts.srv.Config.Handler
	var mu sync.Mutex
	var redirected []string // "/cdn/N" serves redirected[N]
	ts.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n, ok := strings.CutPrefix(r.URL.Path, "/cdn/"); ok {
			var i int
			fmt.Sscan(n, &i)
			mu.Lock()
			r2 := r.Clone(r.Context())
			r2.URL.Path = redirected[i]
			mu.Unlock()
			inner.ServeHTTP(w, r2)
			return
		}
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			mu.Lock()
			redirected = append(redirected, r.URL.Path)
			to := fmt.Sprint("/cdn/", len(redirected)-1)
			mu.Unlock()
			http.Redirect(w, r, to, http.StatusTemporaryRedirect)
			return
		}
		inner.ServeHTTP(w, r)
	})
	// A layer larger than any manifest may be: random bytes do not compress.
	pad := make([]byte, maxManifestSize+1<<20)
	if _, err := io.ReadFull(rand.Reader, pad); err != nil {
		t.Fatal(err)
	}
	img, err := Build(append(testObject(t), pad...), "big.o", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	if n, _ := layers[0].Size(); n <= maxManifestSize {
		t.Fatalf("layer is only %d bytes", n)
	}
	want := ts.push(t, "bpf/big:v1", img)
	r := newReg(t, RegistryOptions{})
	got, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/big:v1")})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != want {
		t.Errorf("digest %s, want %s", got.Digest, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(redirected) == 0 {
		t.Error("no blob was redirected")
	}
}

// A registry that answers a digest with another manifest.
func TestManifestNotMatchingItsDigest(t *testing.T) {
	ts := newTestServer(t)
	a := ts.push(t, "bpf/swap:a", buildTest(t, "a.o"))
	ts.push(t, "bpf/swap:b", buildTest(t, "b.o"))
	inner := ts.srv.Config.Handler
	ts.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/manifests/"+a) {
			r2 := r.Clone(r.Context())
			r2.URL.Path = strings.TrimSuffix(r.URL.Path, a) + "b"
			inner.ServeHTTP(w, r2)
			return
		}
		inner.ServeHTTP(w, r)
	})
	dir := t.TempDir()
	r := newReg(t, RegistryOptions{CacheDir: dir})
	_, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/swap@" + a)})
	wantKind(t, err, fault.Invalid, "does not match the digest")
	if files := blobFiles(t, dir); len(files) != 0 {
		t.Errorf("cache holds %v", files)
	}
}

// Compressed layers of every kind a runtime accepts still read.
func TestLayerCompressions(t *testing.T) {
	tarBytes := tarOf(t, map[string][]byte{"prog.o": testObject(t)})
	var zs bytes.Buffer
	zw, err := zstd.NewWriter(&zs)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(tarBytes)
	zw.Close()
	for _, c := range []struct {
		name  string
		layer []byte
		mt    types.MediaType
	}{
		{"tar", tarBytes, types.OCIUncompressedLayer},
		{"tar+gzip", gzipOf(t, tarBytes), types.OCILayer},
		{"tar+zstd", zs.Bytes(), types.OCILayerZStd},
		{"docker tar+gzip", gzipOf(t, tarBytes), types.DockerLayer},
	} {
		t.Run(c.name, func(t *testing.T) {
			ref, _ := layoutOf(t, imageWithLayer(t, c.layer, c.mt, v2Labels))
			im, err := fetchLayout(t, ref, RegistryOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(im.Object, testObject(t)) {
				t.Error("object differs")
			}
		})
	}
	// A zstd bomb is bounded like a gzip one.
	var bomb bytes.Buffer
	zw, _ = zstd.NewWriter(&bomb, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	tw.WriteHeader(&tar.Header{Name: "prog.o", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3 << 20})
	tw.Flush()
	zw.Write(hdr.Bytes())
	zw.Write(make([]byte, 3<<20))
	zw.Close()
	_, err = unpackObject(context.Background(), bomb.Bytes(), "", 2<<20)
	if err == nil || !strings.Contains(err.Error(), "unpacks to more than") && !strings.Contains(err.Error(), "decoder window") {
		t.Errorf("zstd bomb: %v", err)
	}
}
