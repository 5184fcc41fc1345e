// Package csiwire encodes the CSI requests the command-line client sends,
// in protobuf's wire format, without the CSI spec package or protobuf's
// registries (whose initialisation the client would pay at every start).
// Only the fields the client sets are here; the field numbers are the CSI
// spec's (csi.proto), and a test checks each encoding against the
// generated types' proto.Marshal.
package csiwire

import (
	"sort"

	"google.golang.org/protobuf/encoding/protowire"
)

// The full method names of the calls.
const (
	NodePublishVolumeMethod   = "/csi.v1.Node/NodePublishVolume"
	NodeUnpublishVolumeMethod = "/csi.v1.Node/NodeUnpublishVolume"
)

// AccessModeSingleNodeWriter is VolumeCapability.AccessMode.Mode
// SINGLE_NODE_WRITER.
const AccessModeSingleNodeWriter = 1

// NodePublishVolumeRequest is csi.v1.NodePublishVolumeRequest with a
// mount capability of one access mode and no fs type, mount flags,
// publish context, staging path or secrets.
type NodePublishVolumeRequest struct {
	VolumeID      string
	TargetPath    string
	AccessMode    int32
	Readonly      bool
	VolumeContext map[string]string
}

// Marshal encodes r byte for byte as protobuf-go's deterministic Marshal
// does: fields in number order (oneof members last), zero values left out,
// map entries sorted by key.
func (r *NodePublishVolumeRequest) Marshal() []byte {
	var b []byte
	b = appendString(b, 1, r.VolumeID)   // volume_id
	b = appendString(b, 4, r.TargetPath) // target_path
	// volume_capability (5): access_mode (3), then the access_type oneof's
	// mount (2) = MountVolume{} (protobuf-go writes oneof members last).
	var mode []byte
	if r.AccessMode != 0 {
		mode = protowire.AppendTag(mode, 1, protowire.VarintType)
		mode = protowire.AppendVarint(mode, uint64(int64(r.AccessMode)))
	}
	var capability []byte
	capability = protowire.AppendTag(capability, 3, protowire.BytesType)
	capability = protowire.AppendBytes(capability, mode)
	capability = protowire.AppendTag(capability, 2, protowire.BytesType)
	capability = protowire.AppendBytes(capability, nil)
	b = protowire.AppendTag(b, 5, protowire.BytesType)
	b = protowire.AppendBytes(b, capability)
	if r.Readonly { // readonly (6)
		b = protowire.AppendTag(b, 6, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	keys := make([]string, 0, len(r.VolumeContext))
	for k := range r.VolumeContext {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys { // volume_context (8): entries of key (1), value (2)
		var entry []byte
		entry = protowire.AppendTag(entry, 1, protowire.BytesType)
		entry = protowire.AppendString(entry, k)
		entry = protowire.AppendTag(entry, 2, protowire.BytesType)
		entry = protowire.AppendString(entry, r.VolumeContext[k])
		b = protowire.AppendTag(b, 8, protowire.BytesType)
		b = protowire.AppendBytes(b, entry)
	}
	return b
}

// NodeUnpublishVolumeRequest is csi.v1.NodeUnpublishVolumeRequest.
type NodeUnpublishVolumeRequest struct {
	VolumeID   string
	TargetPath string
}

// Marshal encodes r as protobuf does.
func (r *NodeUnpublishVolumeRequest) Marshal() []byte {
	var b []byte
	b = appendString(b, 1, r.VolumeID)   // volume_id
	b = appendString(b, 2, r.TargetPath) // target_path
	return b
}

// appendString appends a proto3 string field, which is left out when
// empty.
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}
