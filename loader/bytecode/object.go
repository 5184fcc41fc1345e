package bytecode

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"sort"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// MaxObjectSize bounds the ELF object read from a layer; real eBPF objects
// are kilobytes to a few megabytes.
const MaxObjectSize = 64 << 20

// Bounds checked against descriptors before anything is read, so that an
// ordinary container image, or a hostile one, fails fast.
const (
	maxManifestSize = 4 << 20 // manifests and indexes
	maxConfigSize   = 4 << 20
	// maxUnpackedLimit is the most a node may set the unpacked-size bound
	// to: the largest object plus room for tar headers.
	maxUnpackedLimit = MaxObjectSize + 1<<20
)

// layerSizeLimit bounds a compressed layer: compression rarely grows data,
// and never by a MiB on objects this size.
func layerSizeLimit(maxUnpacked int64) int64 { return maxUnpacked + 1<<20 }

// imageParts are the pieces of an image, each already checked against the
// size and digest its descriptor gives.
type imageParts struct {
	digest   string
	manifest *v1.Manifest
	config   []byte
	layer    []byte
}

// Media types a bytecode image may use. Anything else is some other kind
// of artifact, refused before its blobs are read.
var (
	configTypes = map[types.MediaType]bool{types.OCIConfigJSON: true, types.DockerConfigJSON: true}
	layerTypes  = map[types.MediaType]bool{
		types.OCILayer: true, types.OCIUncompressedLayer: true, types.OCILayerZStd: true,
		types.DockerLayer: true, types.DockerUncompressedLayer: true,
	}
)

// checkManifest checks what a manifest says before its blobs are read: the
// media types, one layer, and sizes within bounds. mt is the manifest's
// media type as its descriptor (or the registry) gives it.
func checkManifest(ref string, mt types.MediaType, m *v1.Manifest, maxUnpacked int64) error {
	if !mt.IsImage() {
		return fault.Errorf(fault.Invalid, "image %q is a %s, not an image manifest: a bytecode image is one OCI image with one layer", ref, clip(string(mt)))
	}
	if m.MediaType != "" && m.MediaType != mt {
		return fault.Errorf(fault.Invalid, "image %q: the manifest says it is a %s but was served as a %s", ref, clip(string(m.MediaType)), clip(string(mt)))
	}
	if len(m.Layers) != 1 {
		return fault.Errorf(fault.Invalid, "image %q has %d layers; a bytecode image has exactly one, holding the ELF object", ref, len(m.Layers))
	}
	if !configTypes[m.Config.MediaType] {
		return fault.Errorf(fault.Invalid, "image %q: its config is a %s, not an image config: this is not a bytecode image", ref, clip(string(m.Config.MediaType)))
	}
	if !layerTypes[m.Layers[0].MediaType] {
		return fault.Errorf(fault.Invalid, "image %q: its layer is a %s, not a tar layer: this is not a bytecode image", ref, clip(string(m.Layers[0].MediaType)))
	}
	if m.Config.Size < 0 || m.Config.Size > maxConfigSize || m.Layers[0].Size < 0 || m.Layers[0].Size > layerSizeLimit(maxUnpacked) {
		return fault.Errorf(fault.Invalid, "image %q is too large for a bytecode image (config %d bytes, at most %d; layer %d bytes, at most %d)",
			ref, m.Config.Size, maxConfigSize, m.Layers[0].Size, layerSizeLimit(maxUnpacked))
	}
	for _, d := range []v1.Descriptor{m.Config, m.Layers[0]} {
		if d.Digest.Algorithm != "sha256" || len(d.Digest.Hex) != 64 {
			return fault.Errorf(fault.Invalid, "image %q: unsupported digest %s (only sha256 is)", ref, clip(d.Digest.String()))
		}
	}
	return nil
}

// FromImage reads a bytecode image: its labels, its only layer and the ELF
// object in it, with the default bounds. Every defect is a fault.Invalid
// error naming ref.
func FromImage(ref string, img v1.Image) (*Image, error) {
	return fromImage(context.Background(), ref, img, DefaultMaxUnpackedBytes)
}

func fromImage(ctx context.Context, ref string, img v1.Image, maxUnpacked int64) (*Image, error) {
	digest, err := img.Digest()
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: reading manifest digest: %v", ref, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: reading manifest: %v", ref, err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: reading media type: %v", ref, err)
	}
	if err := checkManifest(ref, mt, m, maxUnpacked); err != nil {
		return nil, err
	}
	p := imageParts{digest: digest.String(), manifest: m}
	if p.config, err = img.RawConfigFile(); err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: reading config: %v", ref, err)
	}
	l, err := img.LayerByDigest(m.Layers[0].Digest)
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: reading layer: %v", ref, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: opening layer: %v", ref, err)
	}
	defer rc.Close()
	if p.layer, err = io.ReadAll(io.LimitReader(rc, m.Layers[0].Size+1)); err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: reading layer: %v", ref, err)
	}
	for _, b := range []struct {
		d    v1.Descriptor
		data []byte
	}{{m.Config, p.config}, {m.Layers[0], p.layer}} {
		if int64(len(b.data)) != b.d.Size || digestOf(b.data) != b.d.Digest.String() {
			return nil, fault.Errorf(fault.Invalid, "image %q: blob %s does not match its descriptor's size and digest", ref, b.d.Digest)
		}
	}
	return decode(ctx, ref, p, maxUnpacked)
}

// decode turns checked parts into an Image: labels from the config, the
// object from the layer (at most maxUnpacked bytes unpacked), and the
// object checked against the labels.
func decode(ctx context.Context, ref string, p imageParts, maxUnpacked int64) (*Image, error) {
	var cfg v1.ConfigFile
	if err := json.Unmarshal(p.config, &cfg); err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: its config is not a JSON image config: %v", ref, err)
	}
	labels, err := ParseLabels(cfg.Config.Labels)
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q is not a bytecode image: %v", ref, err)
	}
	obj, err := unpackObject(ctx, p.layer, labels.Filename, maxUnpacked)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fault.Errorf(fault.Canceled, "image %q: unpacking cancelled: %w", ref, ctx.Err())
		}
		return nil, fault.Errorf(fault.Invalid, "image %q: %v", ref, err)
	}
	if err := CheckObject(obj, labels); err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: %v", ref, err)
	}
	return &Image{
		Reference: ref,
		Digest:    p.digest,
		Object:    obj,
		Programs:  labels.Programs,
		Maps:      labels.Maps,
	}, nil
}

// hostByteOrder is the ELF data encoding of this machine.
var hostByteOrder = func() elf.Data {
	if binary.NativeEndian.Uint16([]byte{1, 0}) == 1 {
		return elf.ELFDATA2LSB
	}
	return elf.ELFDATA2MSB
}()

// CheckObject verifies that obj is an eBPF ELF object for this host's byte
// order that defines every program and map the labels name.
func CheckObject(obj []byte, labels *Labels) (err error) {
	// debug/elf is not written for hostile input: a panic is a defect of
	// the object, never a reason to stop the node's daemon.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the layer's ELF object is malformed (%v)", r)
		}
	}()
	if len(obj) < 4 || !bytes.Equal(obj[:4], []byte(elf.ELFMAG)) {
		return fmt.Errorf("the layer's file is not an ELF object")
	}
	// The identification bytes are checked before parsing: an object for
	// another byte order parses as garbage, and the error should say why.
	if len(obj) < elf.EI_NIDENT {
		return fmt.Errorf("the layer's ELF object is truncated (%d bytes)", len(obj))
	}
	if d := elf.Data(obj[elf.EI_DATA]); d != hostByteOrder {
		return fmt.Errorf("the ELF object's byte order is %s but this node is %s: build the image for this architecture", d, hostByteOrder)
	}
	if c := elf.Class(obj[elf.EI_CLASS]); c != elf.ELFCLASS64 {
		return fmt.Errorf("the ELF object is of class %s; eBPF objects are ELFCLASS64", c)
	}
	f, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil {
		return fmt.Errorf("the layer's ELF object is malformed: %v", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_BPF {
		return fmt.Errorf("the ELF object is for machine %s, not eBPF (EM_BPF)", f.Machine)
	}
	if f.Data != hostByteOrder {
		return fmt.Errorf("the ELF object's byte order is %s but this node is %s: build the image for this architecture", f.Data, hostByteOrder)
	}
	syms, err := f.Symbols()
	if err != nil {
		return fmt.Errorf("the ELF object has no symbol table: %v", err)
	}
	funcs, objects := map[string]bool{}, map[string]bool{}
	for _, s := range syms {
		switch elf.ST_TYPE(s.Info) {
		case elf.STT_FUNC:
			funcs[s.Name] = true
		case elf.STT_OBJECT:
			objects[s.Name] = true
		}
	}
	for _, p := range sortedKeys(labels.Programs) {
		if !funcs[p] {
			p := clip(p)
			return fmt.Errorf("its labels name program %s but the ELF object has no such function (it has: %s)", p, clipList(sortedSet(funcs)))
		}
	}
	for _, m := range sortedKeys(labels.Maps) {
		if !objects[m] {
			m := clip(m)
			return fmt.Errorf("its labels name map %s but the ELF object has no such map", m)
		}
	}
	return nil
}

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		if k != "" {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
