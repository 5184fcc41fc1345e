package bytecode

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// MaxObjectSize bounds the ELF object read from a layer; real eBPF objects
// are kilobytes to a few megabytes.
const MaxObjectSize = 64 << 20

// FromImage reads a bytecode image: its labels, its only layer and the ELF
// object in it. Every defect is a fault.Invalid error naming ref.
func FromImage(ref string, img v1.Image) (*Image, error) {
	digest, err := img.Digest()
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: reading manifest digest: %v", ref, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: reading config: %v", ref, err)
	}
	labels, err := ParseLabels(cfg.Config.Labels)
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q is not a bytecode image: %v", ref, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: reading layers: %v", ref, err)
	}
	if len(layers) != 1 {
		return nil, fault.Errorf(fault.Invalid, "image %q has %d layers; a bytecode image has exactly one, holding the ELF object", ref, len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: opening layer: %v", ref, err)
	}
	defer rc.Close()
	obj, err := readObject(rc, labels.Filename)
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: %v", ref, err)
	}
	if err := CheckObject(obj, labels); err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: %v", ref, err)
	}
	return &Image{
		Reference: ref,
		Digest:    digest.String(),
		Object:    obj,
		Programs:  labels.Programs,
		Maps:      labels.Maps,
	}, nil
}

// readObject returns the layer's object file: the file the v1 labels name,
// or else its only regular file.
func readObject(r io.Reader, filename string) ([]byte, error) {
	tr := tar.NewReader(r)
	var found []string
	var obj []byte
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("layer is not a valid tar archive: %v", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
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
			return nil, fmt.Errorf("object %s is %d bytes, more than the %d allowed", name, h.Size, MaxObjectSize)
		}
		if obj, err = io.ReadAll(io.LimitReader(tr, MaxObjectSize+1)); err != nil {
			return nil, fmt.Errorf("reading %s from layer: %v", name, err)
		}
	}
	switch {
	case len(found) == 0 && filename != "":
		return nil, fmt.Errorf("layer holds no file %q (named by label %s)", filename, LabelV1Filename)
	case len(found) == 0:
		return nil, fmt.Errorf("layer holds no file; it must hold the ELF object")
	case len(found) > 1:
		sort.Strings(found)
		return nil, fmt.Errorf("layer holds %d files (%s); a bytecode layer holds one ELF object", len(found), strings.Join(found, ", "))
	}
	return obj, nil
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
func CheckObject(obj []byte, labels *Labels) error {
	if len(obj) < 4 || !bytes.Equal(obj[:4], []byte(elf.ELFMAG)) {
		return fmt.Errorf("the layer's file is not an ELF object")
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
			return fmt.Errorf("its labels name program %q but the ELF object has no such function (it has: %s)", p, strings.Join(sortedSet(funcs), ", "))
		}
	}
	for _, m := range sortedKeys(labels.Maps) {
		if !objects[m] {
			return fmt.Errorf("its labels name map %q but the ELF object has no such map", m)
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
