package bytecode

import (
	"bytes"
	"io"
	"reflect"
	"runtime"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// Images made here follow bpfman's published image spec directly, without
// Build: FROM scratch, the object in the only layer, labels in the config.

func mutateConfig(t *testing.T, img v1.Image, cfg *v1.ConfigFile) v1.Image {
	t.Helper()
	out, err := mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func appendLayer(t *testing.T, img v1.Image, tarBytes []byte) v1.Image {
	t.Helper()
	out, err := mutate.AppendLayers(img, static.NewLayer(tarBytes, types.OCIUncompressedLayer))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

type handImage struct {
	docker bool   // Docker media types instead of OCI
	gzip   bool   // tar+gzip layer instead of plain tar
	file   string // object path in the layer
	labels map[string]string
	arch   string
}

func (h handImage) build(t *testing.T) v1.Image {
	t.Helper()
	tarBytes := tarOf(t, map[string][]byte{h.file: testObject(t)})
	var layer v1.Layer
	var err error
	switch {
	case h.gzip:
		mt := types.OCILayer
		if h.docker {
			mt = types.DockerLayer
		}
		gz := gzipOf(t, tarBytes)
		layer, err = tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(gz)), nil
		}, tarball.WithMediaType(mt))
		if err != nil {
			t.Fatal(err)
		}
	case h.docker:
		layer = static.NewLayer(tarBytes, types.DockerUncompressedLayer)
	default:
		layer = static.NewLayer(tarBytes, types.OCIUncompressedLayer)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if h.docker {
		img = mutate.MediaType(empty.Image, types.DockerManifestSchema2)
		img = mutate.ConfigMediaType(img, types.DockerConfigJSON)
	}
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", h.arch
	if cfg.Architecture == "" {
		cfg.Architecture = "amd64"
	}
	cfg.Config.Labels = h.labels
	return mutateConfig(t, img, cfg)
}

var v2Labels = map[string]string{
	LabelPrograms: `{"xdp_stats":"xdp"}`,
	LabelMaps:     `{"xdp_stats_map":"per_cpu_array"}`,
}

var v1Labels = map[string]string{
	LabelV1ProgramType:  "xdp",
	LabelV1Filename:     "xdpcounter_bpfel.o",
	LabelV1ProgramName:  "xdp_counter",
	LabelV1FunctionName: "xdp_stats",
}

func TestHandmadeImages(t *testing.T) {
	ts := newTestServer(t)
	r := newReg(t, RegistryOptions{})
	v2Progs := map[string]string{"xdp_stats": "xdp"}
	v2Maps := map[string]string{"xdp_stats_map": "per_cpu_array"}
	for _, c := range []struct {
		name      string
		img       handImage
		progs     map[string]string
		mapsWant  map[string]string
		repoTag   string
		wantKind  fault.Kind
		wantError string
	}{
		{name: "v2 labels, tar+gzip, OCI", img: handImage{gzip: true, file: "xdpcounter_bpfel.o", labels: v2Labels}, progs: v2Progs, mapsWant: v2Maps},
		{name: "v2 labels, plain tar, OCI", img: handImage{file: "bpf/xdpcounter_bpfel.o", labels: v2Labels}, progs: v2Progs, mapsWant: v2Maps},
		{name: "v2 labels, tar+gzip, Docker", img: handImage{docker: true, gzip: true, file: "prog.o", labels: v2Labels}, progs: v2Progs, mapsWant: v2Maps},
		{name: "v2 labels, plain tar, Docker", img: handImage{docker: true, file: "prog.o", labels: v2Labels}, progs: v2Progs, mapsWant: v2Maps},
		{name: "v1 labels, tar+gzip", img: handImage{gzip: true, file: "xdpcounter_bpfel.o", labels: v1Labels}, progs: v2Progs, mapsWant: map[string]string{}},
		{name: "v1 labels, plain tar", img: handImage{file: "./xdpcounter_bpfel.o", labels: v1Labels}, progs: v2Progs, mapsWant: map[string]string{}},
		{name: "v1 labels naming another file", img: handImage{gzip: true, file: "other.o", labels: v1Labels}, wantKind: fault.Invalid, wantError: "xdpcounter_bpfel.o"},
		{name: "no labels", img: handImage{gzip: true, file: "x.o", labels: map[string]string{"maintainer": "me"}}, wantKind: fault.Invalid, wantError: "not a bytecode image"},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := c.img.build(t)
			want := ts.push(t, "bpf/hand:latest", img)
			got, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/hand:latest"), Policy: PullAlways})
			if c.wantError != "" {
				wantKind(t, err, c.wantKind, c.wantError)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Digest != want || !bytes.Equal(got.Object, testObject(t)) {
				t.Errorf("digest %s (want %s), object equal %v", got.Digest, want, bytes.Equal(got.Object, testObject(t)))
			}
			if !reflect.DeepEqual(got.Programs, c.progs) || !reflect.DeepEqual(got.Maps, c.mapsWant) {
				t.Errorf("programs %v maps %v", got.Programs, got.Maps)
			}
			// The cached copy reads back the same.
			again, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/hand@" + want), Policy: PullNever})
			if err != nil || !reflect.DeepEqual(again, &Image{Reference: ts.ref("bpf/hand@" + want), Digest: want, Object: got.Object, Programs: got.Programs, Maps: got.Maps}) {
				t.Errorf("cached copy: %v %v", again, err)
			}
		})
	}
}

func TestMultiArchIndex(t *testing.T) {
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skipf("index holds amd64 and arm64 only, this is %s", runtime.GOARCH)
	}
	ts := newTestServer(t)
	amd := handImage{gzip: true, file: "amd64.o", labels: v2Labels, arch: "amd64"}.build(t)
	arm := handImage{gzip: true, file: "arm64.o", labels: v2Labels, arch: "arm64"}.build(t)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	idx = mutate.AppendManifests(idx,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
	indexDigest := ts.pushIndex(t, "bpf/multi:v1", idx)
	want := map[string]string{"amd64": digestOfImage(t, amd), "arm64": digestOfImage(t, arm)}[runtime.GOARCH]

	dir := t.TempDir()
	r := newReg(t, RegistryOptions{CacheDir: dir})
	for _, ref := range []string{ts.ref("bpf/multi:v1"), ts.ref("bpf/multi@" + indexDigest)} {
		got, err := r.Fetch(ctxT(t), Request{Reference: ref})
		if err != nil {
			t.Fatal(err)
		}
		if got.Digest != want {
			t.Errorf("%s: digest %s, want the %s image %s", ref, got.Digest, runtime.GOARCH, want)
		}
	}
	// Only this platform's image was downloaded.
	if n := len(blobFiles(t, dir)); n != 3 {
		t.Errorf("%d blobs cached, want 3 (manifest, config, layer)", n)
	}
	// The index digest resolves offline too.
	r.Close()
	r2 := newReg(t, RegistryOptions{CacheDir: dir})
	if got, err := r2.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/multi@" + indexDigest), Policy: PullNever}); err != nil || got.Digest != want {
		t.Errorf("offline by index digest: %v %v", got, err)
	}

	// An index without this platform.
	other := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}}})
	ts.pushIndex(t, "bpf/multi:s390x", other)
	_, err := r2.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/multi:s390x")})
	wantKind(t, err, fault.NotFound, "linux/"+runtime.GOARCH, "s390x")
}
