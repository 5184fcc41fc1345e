package testenv

import "github.com/container-storage-interface/spec/lib/go/csi"

// MountCapability is the capability kubelet sends for an inline volume,
// with the pod's fsGroup as volume_mount_group (empty: none).
func MountCapability(gid string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{VolumeMountGroup: gid}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// PublishRequest is a NodePublishVolume request as kubelet makes it for an
// inline volume with these attributes.
func PublishRequest(vol, target string, attrs map[string]string, readOnly bool) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{
		VolumeId: vol, TargetPath: target, Readonly: readOnly,
		VolumeCapability: MountCapability(""), VolumeContext: attrs,
	}
}
