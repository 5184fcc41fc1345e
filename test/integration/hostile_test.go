package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// Hostile bytecode and image sources, through the daemon: each is refused
// with the right code and a message that says why, quickly, and leaves
// nothing behind, in the kernel or in the image cache.

// neverEnding returns the XDP counter object with its program's final
// exit instruction replaced by a jump to itself: a program the verifier
// must reject as an infinite loop.
func neverEnding(t *testing.T) []byte {
	t.Helper()
	obj, err := os.ReadFile(testenv.RepoPath(testenv.XDPCounterObject))
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	sec := f.Section("xdp")
	if sec == nil {
		t.Fatal("the example object has no xdp section")
	}
	const insnSize = 8
	last := -1
	for off := 0; off+insnSize <= int(sec.Size); off += insnSize {
		if obj[int(sec.Offset)+off] == 0x95 { // BPF_JMP|BPF_EXIT
			last = off
		}
	}
	if last < 0 {
		t.Fatal("no exit instruction in the xdp section")
	}
	// BPF_JMP|BPF_JA, no registers, offset -1, imm 0: "goto self".
	copy(obj[int(sec.Offset)+last:], []byte{0x05, 0x00, 0xff, 0xff, 0, 0, 0, 0})
	return obj
}

func TestHostileBytecodeVerifierRejection(t *testing.T) {
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	v := testenv.NewVeth(t)
	target := filepath.Join(testenv.ShortTempDir(t), "vol")
	img := testenv.LayoutBytes(t, neverEnding(t), "loop.o", "v1")

	_, err := d.Node.NodePublishVolume(context.Background(), publishReq("vol-loop", target, xdpAttrs(img, v.Host), true))
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v, want InvalidArgument", err)
	}
	msg := status.Convert(err).Message()
	t.Log(msg)
	for _, want := range []string{"verifier rejected", `program "xdp_stats"`, "infinite loop"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message does not mention %q", want)
		}
	}
	if n := strings.Count(msg, "\n"); n > 25 || len(msg) > 5<<10 {
		t.Errorf("message is %d lines, %d bytes", n, len(msg))
	}
	d.AssertClean(t, v, target)
}

// bombLayer is a gzip'd tar whose one entry declares declared bytes of
// zeros, made of repeated gzip members so that it stays small.
func bombLayer(t *testing.T, declared int64) []byte {
	t.Helper()
	gz := func(b []byte) []byte {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		zw.Write(b)
		zw.Close()
		return buf.Bytes()
	}
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	tw.WriteHeader(&tar.Header{Name: "prog.o", Typeflag: tar.TypeReg, Mode: 0o644, Size: declared})
	tw.Flush()
	out := gz(hdr.Bytes())
	const block = 1 << 20
	zeros := gz(make([]byte, block))
	for n := int64(0); n < declared; n += block {
		out = append(out, zeros...)
	}
	return out
}

func imageOfLayer(t *testing.T, layer []byte, mt types.MediaType) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON), static.NewLayer(layer, mt))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.Config.Labels = map[string]string{bytecode.LabelPrograms: `{"xdp_stats":"xdp"}`}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	return img
}

func writeLayout(t *testing.T, img v1.Image) (ref, dir string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "layout")
	if err := bytecode.WriteLayout(dir, "v1", img); err != nil {
		t.Fatal(err)
	}
	return bytecode.LayoutScheme + dir + ":v1", dir
}

func TestHostileLayoutsThroughDaemon(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "cache")
	fetcher, err := bytecode.NewRegistry(bytecode.RegistryOptions{CacheDir: cache, MaxUnpackedBytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fetcher.Close() })
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Fetcher: fetcher})
	v := testenv.NewVeth(t)
	target := filepath.Join(testenv.ShortTempDir(t), "vol")
	obj, err := os.ReadFile(testenv.RepoPath(testenv.XDPCounterObject))
	if err != nil {
		t.Fatal(err)
	}
	good, err := bytecode.Build(obj, "prog.o", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := good.Manifest()

	fifo, fifoDir := writeLayout(t, good)
	os.Remove(filepath.Join(fifoDir, "index.json"))
	if err := syscall.Mkfifo(filepath.Join(fifoDir, "index.json"), 0o644); err != nil {
		t.Fatal(err)
	}
	zero, zeroDir := writeLayout(t, good)
	os.Remove(filepath.Join(zeroDir, "index.json"))
	os.Symlink("/dev/zero", filepath.Join(zeroDir, "index.json"))
	sparse, sparseDir := writeLayout(t, good)
	os.Truncate(filepath.Join(sparseDir, "blobs", "sha256", m.Config.Digest.Hex), 64<<30)
	tampered, tamperedDir := writeLayout(t, good)
	layer := filepath.Join(tamperedDir, "blobs", "sha256", m.Layers[0].Digest.Hex)
	b, _ := os.ReadFile(layer)
	b[len(b)/2] ^= 0xff
	os.WriteFile(layer, b, 0o644)
	device, deviceDir := writeLayout(t, good)
	os.Remove(filepath.Join(deviceDir, "index.json"))
	if err := syscall.Mknod(filepath.Join(deviceDir, "index.json"), syscall.S_IFCHR|0o644, 1<<8|5); err != nil { // /dev/zero's numbers
		t.Fatal(err)
	}
	bomb, _ := writeLayout(t, imageOfLayer(t, bombLayer(t, 48<<20), types.OCILayer))
	notJSON, notJSONDir := writeLayout(t, good)
	os.WriteFile(filepath.Join(notJSONDir, "index.json"), []byte("{{{"), 0o644)
	// A plain file and a directory that is no layout (like /etc/passwd and
	// /etc, made here: the VMs have neither).
	plainDir := t.TempDir()
	plainFile := filepath.Join(plainDir, "passwd")
	os.WriteFile(plainFile, []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)

	for _, c := range []struct {
		name, image string
		code        codes.Code
		fragment    string
	}{
		{"index.json is a FIFO", fifo, codes.InvalidArgument, "FIFO"},
		{"index.json links to /dev/zero", zero, codes.InvalidArgument, "symbolic link"},
		{"index.json is a character device", device, codes.InvalidArgument, "character device"},
		{"config is a 64 GiB sparse file", sparse, codes.InvalidArgument, "more than"},
		{"layer does not match its digest", tampered, codes.InvalidArgument, "does not match its digest"},
		{"gzip bomb", bomb, codes.InvalidArgument, "unpacks to more than"},
		{"index.json is not JSON", notJSON, codes.InvalidArgument, "not JSON"},
		{"a file, not a layout", "oci:" + plainFile, codes.InvalidArgument, "not a directory"},
		{"a directory, not a layout", "oci:" + plainDir + ":v1", codes.NotFound, "index.json"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			_, err := d.Node.NodePublishVolume(ctx, publishReq("vol-hostile", target, xdpAttrs(c.image, v.Host), true))
			if status.Code(err) != c.code || !strings.Contains(status.Convert(err).Message(), c.fragment) {
				t.Fatalf("got %v, want %s mentioning %q", err, c.code, c.fragment)
			}
			if el := time.Since(start); el > 5*time.Second {
				t.Errorf("refused after %v", el)
			}
			d.AssertClean(t, v, target)
			if files := testenv.Files(t, filepath.Join(cache, "blobs")); len(files) != 0 {
				t.Errorf("the image cache holds %v", files)
			}
		})
	}
}

func TestHostileRegistryManifestNeverEnds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
		w.WriteHeader(http.StatusOK)
		chunk := bytes.Repeat([]byte(" "), 64<<10)
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	cache := filepath.Join(t.TempDir(), "cache")
	fetcher, err := bytecode.NewRegistry(bytecode.RegistryOptions{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fetcher.Close() })
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Fetcher: fetcher})
	v := testenv.NewVeth(t)
	target := filepath.Join(testenv.ShortTempDir(t), "vol")
	ref := fmt.Sprintf("%s/bpf/endless:v1", strings.TrimPrefix(srv.URL, "http://"))
	start := time.Now()
	_, err = d.Node.NodePublishVolume(context.Background(), publishReq("vol-endless", target, xdpAttrs(ref, v.Host), true))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "larger than") {
		t.Fatalf("got %v, want InvalidArgument: manifest larger than the limit", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("cut off after %v", el)
	}
	d.AssertClean(t, v, target)
}
