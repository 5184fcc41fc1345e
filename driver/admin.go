package driver

import (
	"context"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/driver/admin"
	"github.com/bpfmount/bpfmount/driver/state"
)

// Volumes returns the record of every volume the driver has published,
// sorted by volume ID.
func (d *Driver) Volumes() ([]*state.Record, error) {
	recs, err := d.store.List()
	if err != nil {
		return nil, err
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].VolumeID < recs[j].VolumeID })
	return recs, nil
}

// RegisterAdmin serves the admin service (bpfmount.v1.Admin: what
// `bpfmount list` and `unpublish --target` ask) for d on s, next to the
// CSI services.
func RegisterAdmin(s grpc.ServiceRegistrar, d *Driver) {
	admin.Register(s, adminServer{d})
}

type adminServer struct{ d *Driver }

func (a adminServer) ListVolumes(context.Context, *admin.ListVolumesRequest) (*admin.ListVolumesResponse, error) {
	recs, err := a.d.Volumes()
	if err != nil {
		// The RPC boundary: a store that cannot be read is the daemon's
		// fault, not the caller's.
		return nil, status.Errorf(codes.Internal, "reading the volume records: %v (see the daemon's log)", err)
	}
	out := &admin.ListVolumesResponse{Volumes: make([]admin.Volume, 0, len(recs))}
	for _, r := range recs {
		out.Volumes = append(out.Volumes, adminVolume(r))
	}
	return out, nil
}

func adminVolume(r *state.Record) admin.Volume {
	v := admin.Volume{
		VolumeID: r.VolumeID, Target: r.TargetPath,
		PodNamespace: r.Pod.Namespace, PodName: r.Pod.Name, PodUID: r.Pod.UID,
		Image: r.Image, Digest: r.Identity.Digest, Signed: r.Signed,
		Program: r.Identity.Program, Hook: string(r.Identity.Hook), Direction: r.Identity.Direction,
		Interface: r.Identity.Interface, Priority: r.Identity.Priority, XDPMode: r.Identity.XDPMode,
		ProgramID: r.ProgramID, Maps: r.Maps, ReadOnly: r.ReadOnly,
	}
	if v.Maps == nil {
		v.Maps = []string{}
	}
	if !r.Created.IsZero() {
		v.Created = r.Created.UTC().Format(time.RFC3339)
	}
	return v
}
