package driver

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/internal/mapfs"
)

// A map-only volume (from: NAME) loads nothing: it mounts the maps of the
// program loaded under NAME. It does not hold the program: the program's
// attachment follows its load volumes (and keepAttached). The maps do not
// vanish under a reader all the same: the volume's own bpf filesystem pins
// them, and a pin holds a map in the kernel, so a reader whose program
// went keeps readable (no longer changing) maps until it is unpublished.

// isFrom reports whether rec is a map-only volume.
func isFrom(rec *state.Record) bool { return rec.Attributes[AttrFrom] != "" }

// parseFrom checks a map-only volume's attributes: from, maps and the
// kubelet's keys, nothing that loads.
func (vr *volumeRequest) parseFrom() error {
	keys := slices.Sorted(maps.Keys(vr.attrs))
	for _, k := range keys {
		if k == AttrFrom || k == AttrMaps || strings.HasPrefix(k, kubeletPrefix) {
			continue
		}
		return invalid("volume attribute %q cannot be used with %q: a volume either loads or reads, that is it either loads a program (image and its attributes) or mounts the maps of a named one (from and maps)", k, AttrFrom)
	}
	n := vr.attrs[AttrFrom]
	if !validName(n) {
		return invalid("volume attribute %q: %q is not a DNS label: use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit", AttrFrom, n)
	}
	vr.life.from = n
	if m, ok := vr.attrs[AttrMaps]; ok {
		list, err := parseMaps(m)
		if err != nil {
			return err
		}
		vr.maps = list
	}
	return nil
}

// authorizeFrom asks the policy whether the pod may read the maps of the
// name, read-only or not.
func (d *Driver) authorizeFrom(pr *publishRequest) (policy.Decision, error) {
	vr := pr.vol
	pol := d.opts.Policy.Current()
	dec := pol.Decide(policy.Request{
		Local: !vr.fromPod, Namespace: vr.pod.Namespace, ServiceAccount: vr.pod.ServiceAccount, Pod: vr.pod.Name,
		Name: vr.life.from, Reads: true, ReadOnly: pr.readOnly,
	})
	if !dec.Allowed {
		metrics.PolicyDenials.WithLabelValues(pol.NamespaceLabel(vr.pod.Namespace)).Inc()
		return dec, fault.Errorf(fault.PermissionDenied, "%s", dec.Reason)
	}
	return dec, nil
}

// publishFrom publishes a map-only volume.
func (d *Driver) publishFrom(pr *publishRequest, out *publishOutcome) (err error) {
	vr := pr.vol
	if out.dec, err = d.authorizeFrom(pr); err != nil {
		return err
	}
	tgt, release, done, err := d.claimTarget(pr)
	if err != nil || done {
		return err
	}
	defer release()

	name := vr.life.from
	h, err := d.holderOf(name)
	if err != nil {
		return err
	}
	notLoaded := fault.Errorf(fault.Unavailable, "no program is loaded under name %q on this node: the volume mounts its maps once one is (the kubelet retries)", name)
	if h == nil {
		return notLoaded
	}
	out.hook = h.id.Hook
	// Held while its maps are mounted, so they stay open; the volume's
	// own pins hold them after.
	owner := "from:" + pr.volID
	if !d.loader.Hold(h.key, owner) {
		return notLoaded
	}
	defer func() {
		if relErr := d.loader.Release(h.key, owner); relErr != nil {
			klog.ErrorS(relErr, "Dropping a map-only volume's hold on its program", "volume", pr.volID)
		}
	}()
	prog := d.loader.Program(h.key)
	if prog == nil {
		return notLoaded
	}
	have := slices.Sorted(maps.Keys(prog.Maps))
	chosen := vr.maps
	if chosen == nil {
		chosen = have
	}
	selected := make(map[string]*ebpf.Map, len(chosen))
	for _, m := range chosen {
		if !slices.Contains(have, m) {
			return invalid("map %q is not a map of the program named %q (it has: %s)", m, name, listOrNone(have))
		}
		selected[m] = prog.Maps[m]
	}
	sort.Strings(chosen)
	out.rec, err = d.createFrom(pr, tgt, h, selected, chosen)
	return err
}

// createFrom is createVolume for a map-only volume: intent, mounts,
// record; there is no program to acquire.
func (d *Driver) createFrom(pr *publishRequest, tgt *mapfs.Target, h *nameHolder, selected map[string]*ebpf.Map, chosen []string) (_ *state.Record, err error) {
	volID := pr.volID
	var undo undoStack
	defer func() {
		if err != nil {
			undo.run(volID)
		}
	}()
	if err := d.putIntent(pr, tgt, "", &undo); err != nil {
		return nil, err
	}
	made, err := d.expose(pr, tgt, selected, &undo)
	if err != nil {
		return nil, err
	}
	rec := &state.Record{
		VolumeID: volID, TargetPath: pr.target, StagingPath: pr.staging, ReadOnly: pr.readOnly, MountGroup: pr.gid,
		Attributes: pr.vol.attrs, Identity: h.id, ProgramID: h.progID, Maps: chosen, Pod: pr.vol.pod,
		Created: time.Now().UTC(), Mount: made,
	}
	if err := d.store.Put(rec); err != nil {
		return nil, fmt.Errorf("writing the record of volume %q: %w", volID, err)
	}
	if err := d.store.DeleteIntent(volID); err != nil {
		klog.ErrorS(err, "Deleting a publish intent; it is removed at the next start", "volume", volID)
	}
	return rec, nil
}

// restoreFrom restores a map-only volume at start: there is no program to
// adopt, its maps live on in its own bpf filesystem.
func (d *Driver) restoreFrom(rec *state.Record, rep *RestoreReport) {
	if rec.ReadOnly {
		if err := mapfs.SealReadOnly(d.store.StagingPath(rec.VolumeID)); err != nil {
			klog.ErrorS(err, "Cannot make a read-only volume's filesystem read-only", "volume", rec.VolumeID)
		}
	}
	rep.Volumes++
}
