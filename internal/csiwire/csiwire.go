// Package csiwire encodes the CSI requests the command-line client sends,
// in protobuf's wire format, without the CSI spec package or protobuf's
// runtime (whose initialisation the client would pay at every start: even
// protobuf's protowire package seeds its error text by hashing the
// executable). A varint is encoding/binary's Uvarint, which is protobuf's
// base-128 varint. Only the fields the client sets are here; the field
// numbers are the CSI spec's (csi.proto), and a test checks each encoding
// against the generated types' proto.Marshal.
package csiwire

import (
	"encoding/binary"
	"sort"
)

// The wire types used: varint and length-delimited.
const (
	varintType = 0
	bytesType  = 2
)

func appendTag(b []byte, num, wireType uint64) []byte {
	return binary.AppendUvarint(b, num<<3|wireType)
}

func appendBytes(b, v []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(v))), v...)
}

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
		mode = appendTag(mode, 1, varintType)
		mode = binary.AppendUvarint(mode, uint64(int64(r.AccessMode)))
	}
	var capability []byte
	capability = appendTag(capability, 3, bytesType)
	capability = appendBytes(capability, mode)
	capability = appendTag(capability, 2, bytesType)
	capability = appendBytes(capability, nil)
	b = appendTag(b, 5, bytesType)
	b = appendBytes(b, capability)
	if r.Readonly { // readonly (6)
		b = appendTag(b, 6, varintType)
		b = binary.AppendUvarint(b, 1)
	}
	keys := make([]string, 0, len(r.VolumeContext))
	for k := range r.VolumeContext {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys { // volume_context (8): entries of key (1), value (2)
		var entry []byte
		entry = appendTag(entry, 1, bytesType)
		entry = appendBytes(entry, []byte(k))
		entry = appendTag(entry, 2, bytesType)
		entry = appendBytes(entry, []byte(r.VolumeContext[k]))
		b = appendTag(b, 8, bytesType)
		b = appendBytes(b, entry)
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
func appendString(b []byte, num uint64, s string) []byte {
	if s == "" {
		return b
	}
	b = appendTag(b, num, bytesType)
	return appendBytes(b, []byte(s))
}
