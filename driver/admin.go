package driver

import (
	"context"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/driver/admin"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/loader"
)

// Volumes returns the record of every volume the driver has published,
// sorted by volume ID, from the records it keeps in memory.
func (d *Driver) Volumes() ([]*state.Record, error) {
	return d.store.List()
}

// RegisterAdmin serves the admin service (bpfmount.v1.Admin: what
// `bpfmount list` and `unpublish --target` ask) for d on s, next to the
// CSI services.
func RegisterAdmin(s grpc.ServiceRegistrar, d *Driver) {
	admin.Register(s, adminServer{d})
}

type adminServer struct{ d *Driver }

func (a adminServer) ListVolumes(_ context.Context, req *admin.ListVolumesRequest) (*admin.ListVolumesResponse, error) {
	var recs []*state.Record
	var err error
	if len(req.Targets) > 0 {
		recs, err = a.d.store.atTargets(req.Targets)
	} else {
		recs, err = a.d.Volumes()
	}
	if err != nil {
		// The RPC boundary: a store that cannot be read is the daemon's
		// fault, not the caller's.
		return nil, status.Errorf(codes.Internal, "reading the volume records: %v (see the daemon's log)", err)
	}
	var byKey map[string]loader.Usage
	if req.WithUsage() && len(recs) > 0 {
		byKey = map[string]loader.Usage{}
		for _, u := range a.d.usage() {
			byKey[u.Key] = u
		}
	}
	out := &admin.ListVolumesResponse{Volumes: make([]admin.Volume, 0, len(recs))}
	for _, r := range recs {
		v := adminVolume(r)
		if u, ok := byKey[r.Key]; ok && r.Broken == "" {
			a.d.addUsage(&v, u)
		}
		out.Volumes = append(out.Volumes, v)
	}
	return out, nil
}

// recordsAt keeps the records whose target is one of targets (compared
// clean), in their order: the lookup by target when the records come from
// disk.
func recordsAt(recs []*state.Record, targets []string) []*state.Record {
	want := make(map[string]bool, len(targets))
	for _, t := range targets {
		want[filepath.Clean(t)] = true
	}
	var out []*state.Record
	for _, r := range recs {
		if want[filepath.Clean(r.TargetPath)] {
			out = append(out, r)
		}
	}
	return out
}

// addUsage adds to v what the loader holds for its program now.
func (d *Driver) addUsage(v *admin.Volume, u loader.Usage) {
	attached := u.Attached
	v.Attached, v.SharedBy, v.Dispatched = &attached, len(u.Owners), u.Dispatched
	if r := d.runStats(u); r != nil {
		count, ns := r.Count, uint64(r.Time.Nanoseconds())
		v.RunCount, v.RunTimeNs = &count, &ns
	}
	if len(u.Maps) > 0 {
		var total uint64
		for _, m := range u.Maps {
			total += m.Bytes
			v.MapBytesEstimated = v.MapBytesEstimated || m.Estimated
		}
		v.MapBytes = &total
	}
}

func adminVolume(r *state.Record) admin.Volume {
	v := admin.Volume{
		VolumeID: r.VolumeID, Target: r.TargetPath,
		PodNamespace: r.Pod.Namespace, PodName: r.Pod.Name, PodUID: r.Pod.UID,
		Image: r.Image, Digest: r.Identity.Digest, Signed: r.Signed,
		Program: r.Identity.Program, Hook: string(r.Identity.Hook), Direction: r.Identity.Direction,
		Interface: shownInterface(r.Identity), Cgroup: r.Identity.Cgroup, AttachTo: r.Identity.AttachTo, Priority: r.Identity.Priority, XDPMode: r.Identity.XDPMode,
		ProgramID: r.ProgramID, Maps: r.Maps, ReadOnly: r.ReadOnly, Broken: r.Broken,
	}
	if v.Maps == nil {
		v.Maps = []string{}
	}
	v.Name, v.From, v.ResetMaps = r.Attributes[AttrName], r.Attributes[AttrFrom], r.ResetMaps
	if r.KeepAttached > 0 {
		v.KeepAttached = r.KeepAttached.String()
	}
	if !r.Created.IsZero() {
		v.Created = r.Created.UTC().Format(time.RFC3339)
	}
	return v
}
