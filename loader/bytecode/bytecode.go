// Package bytecode fetches eBPF bytecode images and builds them.
//
// A bytecode image follows bpfman's format: an OCI image whose config labels
// describe the programs and maps of one ELF object, held in the image's only
// layer. Version 2 labels are JSON objects:
//
//	io.ebpf.programs = {"xdp_stats": "xdp"}
//	io.ebpf.maps     = {"xdp_stats_map": "per_cpu_array"}
//
// Version 1 images carry io.ebpf.program_type, io.ebpf.bpf_function_name,
// io.ebpf.program_name and io.ebpf.filename instead; they are read too.
//
// Fetchers resolve a reference to an [Image]. The local layout fetcher
// ([Layout]) serves `oci:PATH[:TAG]` references.
package bytecode

import (
	"context"
	"sort"
	"strings"
)

// PullPolicy says when a fetcher may contact the image's source.
type PullPolicy string

// Pull policies, with Kubernetes' names and meaning.
const (
	PullAlways       PullPolicy = "Always"
	PullIfNotPresent PullPolicy = "IfNotPresent"
	PullNever        PullPolicy = "Never"
)

// Request names an image to fetch.
type Request struct {
	// Reference is the image reference as the user wrote it.
	Reference string
	// Policy is the pull policy; empty means IfNotPresent.
	Policy PullPolicy
	// DockerConfigJSON holds registry credentials in the
	// kubernetes.io/dockerconfigjson format. It is used for this request
	// only and never stored or logged.
	DockerConfigJSON []byte
}

// Image is a fetched bytecode image.
type Image struct {
	// Reference is the reference the image was fetched by.
	Reference string
	// Digest is the manifest digest ("sha256:…"): the image's identity.
	Digest string
	// Object is the ELF object file.
	Object []byte
	// Programs maps program (function) names to hook types, from the labels.
	Programs map[string]string
	// Maps maps map names to map types, from the labels.
	Maps map[string]string
	// Signed is true when a signature over Digest was verified.
	Signed bool
}

// ProgramNames returns the image's program names, sorted.
func (im *Image) ProgramNames() []string { return sortedKeys(im.Programs) }

// MapNames returns the image's map names, sorted.
func (im *Image) MapNames() []string { return sortedKeys(im.Maps) }

// Fetcher resolves a reference to an image.
type Fetcher interface {
	Fetch(ctx context.Context, req Request) (*Image, error)
}

// LayoutScheme prefixes references to local OCI layouts.
const LayoutScheme = "oci:"

// IsLayout reports whether ref names a local OCI layout.
func IsLayout(ref string) bool { return strings.HasPrefix(ref, LayoutScheme) }

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
