package csiwire

import (
	"bytes"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// marshal is the generated types' encoding, in the deterministic order
// (map entries sorted), the one Marshal produces.
func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkEqual compares ours with the generated encoding byte for byte and,
// decoded back into the generated type, field by field.
func checkEqual(t *testing.T, name string, ours []byte, want proto.Message) {
	t.Helper()
	if w := marshal(t, want); !bytes.Equal(ours, w) {
		i := 0
		for i < len(ours) && i < len(w) && ours[i] == w[i] {
			i++
		}
		t.Errorf("%s: encoding (%d bytes) differs from proto.Marshal's (%d bytes) at byte %d:\n got %.64x\nwant %.64x", name, len(ours), len(w), i, ours[i:], w[i:])
	}
	got := want.ProtoReflect().New().Interface()
	if err := proto.Unmarshal(ours, got); err != nil {
		t.Fatalf("%s: the generated type cannot decode our encoding: %v", name, err)
	}
	if got.ProtoReflect().GetUnknown() != nil {
		t.Errorf("%s: fields unknown to the spec: %x", name, got.ProtoReflect().GetUnknown())
	}
	want.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if g := got.ProtoReflect().Get(fd); !g.Equal(v) {
			t.Errorf("%s: field %s = %v, want %v", name, fd.Name(), g, v)
		}
		return true
	})
	if !proto.Equal(got, want) {
		t.Errorf("%s: decoded %v, want %v", name, got, want)
	}
}

func mountCapability(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func TestNodePublishVolumeRequest(t *testing.T) {
	for _, c := range []struct {
		name string
		ours NodePublishVolumeRequest
		want *csi.NodePublishVolumeRequest
	}{{
		name: "as the CLI sends it",
		ours: NodePublishVolumeRequest{
			VolumeID: "local-0123456789abcdef", TargetPath: "/run/bpf/counter", AccessMode: AccessModeSingleNodeWriter, Readonly: true,
			VolumeContext: map[string]string{"image": "oci:/srv/counter:v1", "interface": "eth0", "globals": "a=01", "priority": "50"},
		},
		want: &csi.NodePublishVolumeRequest{
			VolumeId: "local-0123456789abcdef", TargetPath: "/run/bpf/counter", Readonly: true,
			VolumeCapability: mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
			VolumeContext:    map[string]string{"image": "oci:/srv/counter:v1", "interface": "eth0", "globals": "a=01", "priority": "50"},
		},
	}, {
		// Zero values are left out, an empty map value is still sent,
		// and long and non-ASCII strings take multi-byte lengths.
		name: "empty values, long and non-ASCII strings",
		ours: NodePublishVolumeRequest{
			TargetPath: "/run/bpf/" + string(bytes.Repeat([]byte("é"), 200)), AccessMode: AccessModeSingleNodeWriter,
			VolumeContext: map[string]string{"maps": "", "ünïcode": "välue", "z": string(bytes.Repeat([]byte("x"), 70000))},
		},
		want: &csi.NodePublishVolumeRequest{
			TargetPath:       "/run/bpf/" + string(bytes.Repeat([]byte("é"), 200)),
			VolumeCapability: mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
			VolumeContext:    map[string]string{"maps": "", "ünïcode": "välue", "z": string(bytes.Repeat([]byte("x"), 70000))},
		},
	}, {
		name: "no attributes, mode unset",
		ours: NodePublishVolumeRequest{VolumeID: "v", TargetPath: "/t"},
		want: &csi.NodePublishVolumeRequest{VolumeId: "v", TargetPath: "/t", VolumeCapability: mountCapability(csi.VolumeCapability_AccessMode_UNKNOWN)},
	}} {
		checkEqual(t, c.name, c.ours.Marshal(), c.want)
	}
}

func TestNodeUnpublishVolumeRequest(t *testing.T) {
	for _, c := range []struct {
		ours NodeUnpublishVolumeRequest
		want *csi.NodeUnpublishVolumeRequest
	}{
		{NodeUnpublishVolumeRequest{"published-with-its-own-id", "/run/bpf/a"}, &csi.NodeUnpublishVolumeRequest{VolumeId: "published-with-its-own-id", TargetPath: "/run/bpf/a"}},
		{NodeUnpublishVolumeRequest{"", "/t"}, &csi.NodeUnpublishVolumeRequest{TargetPath: "/t"}},
		{NodeUnpublishVolumeRequest{}, &csi.NodeUnpublishVolumeRequest{}},
	} {
		checkEqual(t, c.ours.VolumeID, c.ours.Marshal(), c.want)
	}
}

// The method names are the generated client's.
func TestMethodNames(t *testing.T) {
	if NodePublishVolumeMethod != csi.Node_NodePublishVolume_FullMethodName || NodeUnpublishVolumeMethod != csi.Node_NodeUnpublishVolume_FullMethodName {
		t.Errorf("methods %q, %q; want %q, %q", NodePublishVolumeMethod, NodeUnpublishVolumeMethod,
			csi.Node_NodePublishVolume_FullMethodName, csi.Node_NodeUnpublishVolume_FullMethodName)
	}
	if AccessModeSingleNodeWriter != int32(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER) {
		t.Errorf("SINGLE_NODE_WRITER is %d, want %d", AccessModeSingleNodeWriter, csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	}
}
