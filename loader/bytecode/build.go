package bytecode

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Build makes a bytecode image in bpfman's v2 format: one gzip'd tar layer
// holding the object at /filename, and labels naming its programs and maps.
// With nil programs or maps, they are read from the object itself. The
// result is reproducible: the same inputs give the same digest.
func Build(object []byte, filename string, programs, maps map[string]string) (v1.Image, error) {
	if programs == nil || maps == nil {
		p, m, err := Describe(object)
		if err != nil {
			return nil, err
		}
		if programs == nil {
			programs = p
		}
		if maps == nil {
			maps = m
		}
	}
	labels := &Labels{Programs: programs, Maps: maps}
	if err := CheckObject(object, labels); err != nil {
		return nil, err
	}
	progJSON, _ := json.Marshal(programs)
	mapJSON, _ := json.Marshal(maps)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Name: filepath.Base(filename), Mode: 0o644, Size: int64(len(object)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(object); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	tarBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarBytes)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Config.Labels = map[string]string{LabelPrograms: string(progJSON), LabelMaps: string(mapJSON)}
	return mutate.ConfigFile(img, cfg)
}

// WriteLayout stores img in the OCI layout at dir under tag, creating the
// layout if needed and replacing an image already tagged so.
func WriteLayout(dir, tag string, img v1.Image) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		if _, statErr := os.Stat(filepath.Join(dir, "index.json")); !errors.Is(statErr, fs.ErrNotExist) {
			return fmt.Errorf("%s is not an OCI layout: %v", dir, err)
		}
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return err
		}
	}
	ann := map[string]string{refNameAnnotation: tag}
	return p.ReplaceImage(img, match.Annotation(refNameAnnotation, tag), layout.WithAnnotations(ann))
}

// Describe reads the programs and maps an ELF object defines, with the type
// names bpfman's labels use. Internal maps (.rodata, .bss, …) are left out.
func Describe(object []byte) (programs, maps map[string]string, err error) {
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(object))
	if err != nil {
		return nil, nil, fmt.Errorf("reading ELF object: %v", err)
	}
	programs, maps = map[string]string{}, map[string]string{}
	for name, p := range spec.Programs {
		programs[name] = HookOf(p)
	}
	for name, m := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue
		}
		maps[name] = snake(m.Type.String())
	}
	return programs, maps, nil
}

// HookOf names the hook a program spec is for, as bpfman labels do: tc
// classifiers in a "tcx/…" section are "tcx", other classifiers "tc".
func HookOf(p *ebpf.ProgramSpec) string {
	switch p.Type {
	case ebpf.XDP:
		return "xdp"
	case ebpf.SchedCLS:
		if strings.HasPrefix(p.SectionName, "tcx") {
			return "tcx"
		}
		return "tc"
	case ebpf.TracePoint:
		return "tracepoint"
	case ebpf.Kprobe:
		// One program type for four hooks: the section says which.
		for _, h := range []string{"kretprobe", "uretprobe", "uprobe"} {
			if strings.HasPrefix(p.SectionName, h) {
				return h
			}
		}
		return "kprobe"
	case ebpf.Tracing:
		switch p.AttachType {
		case ebpf.AttachTraceFEntry:
			return "fentry"
		case ebpf.AttachTraceFExit:
			return "fexit"
		}
	}
	return snake(p.Type.String())
}

var camelBoundary = regexp.MustCompile(`([a-z0-9])([A-Z])`)

// snake turns cilium/ebpf's type names ("PerCPUArray") into bpfman's
// ("per_cpu_array").
func snake(s string) string {
	s = strings.ReplaceAll(s, "CPU", "Cpu")
	return strings.ToLower(camelBoundary.ReplaceAllString(s, "${1}_${2}"))
}
