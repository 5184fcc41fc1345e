package driver

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver/events"
	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/internal/mapfs"
	"github.com/bpfmount/bpfmount/loader"
)

var _ csi.NodeServer = (*Driver)(nil)

// dockerConfigKey is the key of a kubernetes.io/dockerconfigjson Secret.
const dockerConfigKey = ".dockerconfigjson"

// NodePublishVolume loads, attaches and exposes the program the volume's
// attributes describe (the steps are in the package documentation); every
// failure undoes what was done.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	start := time.Now()
	var out publishOutcome
	err := d.publish(ctx, req, &out)
	observe(metrics.PublishDuration, out.hook, start, err)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// publishRequest is a checked NodePublishVolume request.
type publishRequest struct {
	volID, target, staging string
	readOnly               bool
	gid                    string // volume_mount_group, "" for none
	vol                    *volumeRequest
	keep                   time.Duration // keepAttached in effect (lifetime.go)
	upgradeFrom            *nameHolder   // the program this load replaces in place (upgrade.go)
	upgraded               *loader.Replaced
}

// publishOutcome is what a publish learned, for metrics, audit and events.
type publishOutcome struct {
	hook loader.Hook     // the hook, once known
	dec  policy.Decision // the policy's last decision
	rec  *state.Record   // the new record; nil when none was made
}

// publish is NodePublishVolume with fault errors.
func (d *Driver) publish(ctx context.Context, req *csi.NodePublishVolumeRequest, out *publishOutcome) error {
	pr, err := d.checkPublishRequest(req)
	if err != nil {
		// Only for the metric: hookLabel maps any unknown type to "invalid".
		out.hook = loader.Hook(req.GetVolumeContext()[AttrType])
		return err
	}
	out.hook = pr.vol.load.Hook
	// Logged only now: nothing unchecked reaches the log. At the default
	// verbosity the audit line is the call's one line.
	if klog.V(4).Enabled() {
		klog.InfoS("Publish request", publishLogValues(pr)...)
	}
	err = d.publishVolume(ctx, pr, out)
	switch {
	case err == nil && out.rec == nil:
		return nil // already published as asked
	case fault.Of(err) == fault.Aborted:
		return err // transient: kubelet retries; no event for it
	}
	d.report(pr, out, err)
	return err
}

// publishVolume does the steps after the request is checked.
func (d *Driver) publishVolume(ctx context.Context, pr *publishRequest, out *publishOutcome) (err error) {
	vr := pr.vol
	if vr.life.from != "" {
		return d.publishFrom(pr, out)
	}
	if err := d.resolveNodeInterface(vr); err != nil {
		return err
	}
	// Policy first, on everything known before the fetch: a pod no rule
	// allows makes the node read no file and contact no registry.
	if out.dec, err = d.authorize(pr, vr.load.Hook, vr.load.AttachTo); err != nil {
		return err
	}
	if pr.keep, err = d.checkLifetime(vr); err != nil {
		return err
	}
	// The target before anything is fetched or loaded.
	tgt, release, done, err := d.claimTarget(pr)
	if err != nil || done {
		return err
	}
	defer release()
	if err := d.resolveCgroup(vr); err != nil {
		return err
	}
	if err := d.checkPodNetwork(ctx, vr); err != nil {
		return err
	}

	res, err := d.loader.Resolve(ctx, vr.load)
	if err != nil {
		return err
	}
	out.hook = res.Identity.Hook
	if vr.load.Hook == "" || res.Identity.AttachTo != vr.load.AttachTo {
		// The image named the hook, or the socket operation of a
		// cgroup_sock_addr program (its section): decide again, now on
		// all of it.
		if out.dec, err = d.authorize(pr, res.Identity.Hook, res.Identity.AttachTo); err != nil {
			return err
		}
	}
	if out.dec.RequireSignature && !res.Image.Signed {
		return fault.Errorf(fault.PermissionDenied, "image %q is not signed by a trusted key, and policy rule %q requires a signature", vr.load.Image.Reference, out.dec.Rule)
	}
	maps, err := chooseMaps(vr, res)
	if err != nil {
		return err
	}
	// A name is checked and taken in one step: two loads under one name
	// cannot both pass the check.
	unlockName, upgradeFrom, err := d.claimName(vr.life.name, res, true)
	if err != nil {
		return err
	}
	pr.upgradeFrom = upgradeFrom
	defer unlockName()
	// A program whose keepAttached ended is detached before this publish
	// could join it, whether or not the collector ran yet.
	d.expireLingers(time.Now())
	out.rec, err = d.createVolume(ctx, pr, tgt, res, maps)
	if err == nil {
		d.takeOver(out.rec)
	}
	return err
}

// authorize is the policy's one decision point. An empty hook means the
// image will name it: the request is then denied only when no rule could
// allow it for any hook, and decided again once the hook is known. So is
// an empty attachTo of a cgroup_sock_addr request: the object's section
// names the operation.
func (d *Driver) authorize(pr *publishRequest, hook loader.Hook, attachTo string) (policy.Decision, error) {
	vr := pr.vol
	pol := d.opts.Policy.Current()
	prio := vr.load.Priority
	if prio == 0 && vr.load.Interface != "" {
		prio = loader.DefaultPriority // what the loader applies to network hooks
	}
	dec := pol.Decide(policy.Request{
		Local:          !vr.fromPod,
		Namespace:      vr.pod.Namespace,
		ServiceAccount: vr.pod.ServiceAccount,
		Pod:            vr.pod.Name,
		Image:          vr.load.Image.Reference,
		Interface:      policyInterface(&vr.load),
		Cgroup:         vr.load.Cgroup,
		AttachTo:       policyAttachTo(&vr.load, attachTo),
		Hook:           string(hook),
		Priority:       prio,
		ReadOnly:       pr.readOnly,
		Name:           vr.life.name,
	})
	if !dec.Allowed {
		metrics.PolicyDenials.WithLabelValues(pol.NamespaceLabel(vr.pod.Namespace)).Inc()
		return dec, fault.Errorf(fault.PermissionDenied, "%s", dec.Reason)
	}
	return dec, nil
}

// chooseMaps returns the maps to expose: those the request names, all of
// them present in the image, or else every map of the image.
func chooseMaps(vr *volumeRequest, res *loader.Resolved) ([]string, error) {
	if vr.maps == nil {
		return res.Maps, nil
	}
	for _, m := range vr.maps {
		if !slices.Contains(res.Maps, m) {
			return nil, invalid("map %q not in image %q (it holds: %s)", m, vr.load.Image.Reference, listOrNone(res.Maps))
		}
	}
	return vr.maps, nil
}

// createVolume writes the publish intent, acquires the program, mounts the
// chosen maps at the target and writes the volume's record. On error it
// undoes the steps done, last first, so nothing is left behind.
func (d *Driver) createVolume(ctx context.Context, pr *publishRequest, tgt *mapfs.Target, res *loader.Resolved, maps []string) (_ *state.Record, err error) {
	volID := pr.volID
	var undo undoStack
	defer func() {
		if err != nil {
			undo.run(volID)
		}
	}()

	key := res.Identity.Key()
	if err := d.putIntent(pr, tgt, key, &undo); err != nil {
		return nil, err
	}
	failpoint.Hit("publish.intent")

	prog, err := d.acquire(ctx, pr, res)
	if err != nil {
		return nil, err
	}
	undo.push("releasing the program", func() error { return d.loader.Release(key, volID) })

	selected := make(map[string]*ebpf.Map, len(maps))
	for _, m := range maps {
		selected[m] = prog.Maps[m]
	}
	statusMapOf(prog, selected)
	made, err := d.expose(pr, tgt, selected, &undo)
	if err != nil {
		return nil, err
	}

	rec := &state.Record{
		VolumeID: volID, TargetPath: pr.target, StagingPath: pr.staging, ReadOnly: pr.readOnly, MountGroup: pr.gid,
		Attributes: pr.vol.attrs, Image: pr.vol.load.Image.Reference, Signed: res.Image.Signed,
		Identity: res.Identity, Key: key, ProgramID: uint32(prog.ID), Maps: maps, Pod: pr.vol.pod, Created: time.Now().UTC(),
		Mount: made, KeepAttached: pr.keep,
	}
	if pr.upgraded != nil {
		rec.ResetMaps = pr.upgraded.Reset
	}
	if err := d.store.Put(rec); err != nil {
		return nil, fmt.Errorf("writing the record of volume %q: %w", volID, err)
	}
	failpoint.Hit("publish.record")
	// The record is the truth from here on; a leftover intent next to a
	// record is ignored (and removed) at the next start.
	if err := d.store.DeleteIntent(volID); err != nil {
		klog.ErrorS(err, "Deleting a publish intent; it is removed at the next start", "volume", volID)
	}
	d.startDeferred(rec, prog, true)
	return rec, nil
}

// putIntent writes the intent to publish pr's volume (of the program with
// key, none for a map-only volume), undone by deleting it.
func (d *Driver) putIntent(pr *publishRequest, tgt *mapfs.Target, key string, undo *undoStack) error {
	volID := pr.volID
	intent := &state.Intent{Op: state.OpPublish, VolumeID: volID, TargetPath: pr.target, StagingPath: pr.staging, Key: key, CreateTarget: !tgt.Existed}
	if err := d.store.PutIntent(intent); err != nil {
		return fmt.Errorf("writing the intent of volume %q: %w", volID, err)
	}
	undo.push("deleting the intent", func() error { return d.store.DeleteIntent(volID) })
	return nil
}

// expose mounts the selected maps of pr's volume at its target, undone by
// unmounting, and returns what was mounted.
func (d *Driver) expose(pr *publishRequest, tgt *mapfs.Target, selected map[string]*ebpf.Map, undo *undoStack) (mapfs.Made, error) {
	gid := -1
	if pr.gid != "" {
		gid, _ = strconv.Atoi(pr.gid) // checked by checkCapability
	}
	made, err := d.mounts.Expose(pr.staging, tgt, selected, mapfs.Options{ReadOnly: pr.readOnly, GID: gid})
	if err != nil {
		return made, fmt.Errorf("mounting the maps of volume %q at %s: %w", pr.volID, pr.target, err)
	}
	undo.push("unmounting", func() error { return d.mounts.Withdraw(pr.staging, pr.target, made) })
	return made, nil
}

// undoStack holds the steps that roll back a partly done operation.
type undoStack []undoStep

type undoStep struct {
	what string
	do   func() error
}

func (u *undoStack) push(what string, do func() error) { *u = append(*u, undoStep{what, do}) }

// run undoes every step, last first. A step that fails is logged and the
// others still run: the error that caused the rollback is the one to return.
func (u undoStack) run(volID string) {
	for i := len(u) - 1; i >= 0; i-- {
		if err := u[i].do(); err != nil {
			klog.ErrorS(errors.New(clip(err.Error(), maxLogError)), "Rolling back publish: "+u[i].what, "volume", volID)
		}
	}
}

// claimTarget locks pr's volume, answers a repeated publish of it (done),
// and opens the target: under an allowed root, no symlink, missing or an
// empty directory. The target stays open, so the mount lands on what was
// checked; release closes it and unlocks the volume, and is set whenever
// a target is returned.
func (d *Driver) claimTarget(pr *publishRequest) (tgt *mapfs.Target, release func(), done bool, err error) {
	unlock, err := d.lockVolume(pr.volID)
	if err != nil {
		return nil, nil, false, err
	}
	done, err = d.checkExisting(pr.volID, pr.target, pr.staging, pr.vol, pr.readOnly, pr.gid)
	if err != nil || done {
		unlock()
		return nil, nil, done, err
	}
	if tgt, err = d.mounts.OpenTarget(pr.target, d.opts.TargetRoots); err != nil {
		unlock()
		return nil, nil, false, err
	}
	return tgt, func() {
		tgt.Close()
		unlock()
	}, false, nil
}

// checkExisting implements publish idempotency from what is really mounted.
// done is true when the volume is already published as asked.
func (d *Driver) checkExisting(volID, target, staging string, vr *volumeRequest, readOnly bool, gid string) (done bool, err error) {
	rec, err := d.store.Get(volID)
	if err != nil {
		return false, fmt.Errorf("reading the record of volume %q: %w", volID, err)
	}
	tm, err := d.mounts.Inspect(target)
	if err != nil {
		return false, err
	}
	if rec != nil && rec.TargetPath != target {
		return false, fault.Errorf(fault.Precondition, "volume %q is already published at %s; unpublish it there first", volID, rec.TargetPath)
	}
	if tm.Mounted && tm.FSType != "bpf" {
		return false, fault.Errorf(fault.Precondition, "target %s already has a %s filesystem mounted; bpfmount mounts only onto an empty directory", target, tm.FSType)
	}
	if rec == nil {
		if tm.Mounted {
			return false, fault.Errorf(fault.AlreadyExists, "target %s already holds another bpf filesystem, not volume %q", target, volID)
		}
		return false, nil
	}
	sm, err := d.mounts.Inspect(staging)
	if err != nil {
		return false, err
	}
	if tm.Mounted && sm.Mounted && tm.Dev == sm.Dev && rec.Broken == "" && (!rec.ReadOnly || tm.ReadOnly && sm.SuperReadOnly) {
		if !sameRequest(rec, vr, readOnly, gid) {
			return false, fault.Errorf(fault.AlreadyExists, "volume %q is already published at %s with different attributes or read-only flag; unpublish it first", volID, target)
		}
		return true, nil
	}
	// The record says published but the mounts are not all there or not
	// read-only as recorded (a crash, someone unmounted by hand), or its
	// program was lost (a reboot, damaged pins): start over cleanly.
	klog.InfoS("Volume record without its mounts; publishing again", "volume", volID, "target", clip(target, maxLogValue))
	return false, d.unpublish(rec)
}

func sameRequest(rec *state.Record, vr *volumeRequest, readOnly bool, gid string) bool {
	if rec.ReadOnly != readOnly || rec.MountGroup != gid || len(rec.Attributes) != len(vr.attrs) {
		return false
	}
	for k, v := range vr.attrs {
		if rec.Attributes[k] != v {
			return false
		}
	}
	return true
}

// NodeUnpublishVolume unmounts the volume, removes its target directory,
// releases its program (detaching it when no other volume shares it) and
// deletes its record. It is idempotent.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	start := time.Now()
	var hook loader.Hook
	err := d.unpublishRequest(req, &hook)
	observe(metrics.UnpublishDuration, hook, start, err)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// unpublishRequest is NodeUnpublishVolume with fault errors; it sets hook
// once the volume's record names it.
func (d *Driver) unpublishRequest(req *csi.NodeUnpublishVolumeRequest, hook *loader.Hook) error {
	volID, target := req.GetVolumeId(), req.GetTargetPath()
	if err := d.checkVolumeAndTarget(volID, target); err != nil {
		return err
	}
	klog.V(4).InfoS("Unpublish request", "volume", volID, "target", clip(target, maxLogValue))
	unlock, err := d.lockVolume(volID)
	if err != nil {
		return err
	}
	defer unlock()

	rec, err := d.store.Get(volID)
	if err != nil {
		return fmt.Errorf("reading the record of volume %q: %w", volID, err)
	}
	if rec == nil || rec.TargetPath != target {
		// Unknown volume, or a target this volume was never published at:
		// make sure nothing of ours is mounted there, and succeed.
		return d.withdrawUnknown(volID, target, rec != nil)
	}
	*hook = rec.Identity.Hook
	if err := d.unpublish(rec); err != nil {
		return err
	}
	audit("unload", volID, target, nil, rec, policy.Decision{}, nil)
	return nil
}

// unpublish tears down a recorded volume: intent, unmount, release, record.
func (d *Driver) unpublish(rec *state.Record) error {
	intent := &state.Intent{Op: state.OpUnpublish, VolumeID: rec.VolumeID, TargetPath: rec.TargetPath, StagingPath: rec.StagingPath, Key: rec.Key}
	if err := d.store.PutIntent(intent); err != nil {
		return fmt.Errorf("writing the intent of volume %q: %w", rec.VolumeID, err)
	}
	failpoint.Hit("unpublish.intent")
	if err := d.withdrawRecord(rec); err != nil {
		return fmt.Errorf("unmounting volume %q: %w", rec.VolumeID, err)
	}
	d.stopDeferred(rec.VolumeID)
	if err := d.linger(rec); err != nil {
		return err
	}
	if !isFrom(rec) { // a map-only volume holds no program
		if err := d.loader.Release(rec.Key, rec.VolumeID); err != nil {
			return fmt.Errorf("releasing the program of volume %q: %w", rec.VolumeID, err)
		}
	}
	failpoint.Hit("unpublish.released")
	if err := d.store.Delete(rec.VolumeID); err != nil {
		return fmt.Errorf("deleting the record of volume %q: %w", rec.VolumeID, err)
	}
	failpoint.Hit("unpublish.record")
	return d.store.DeleteIntent(rec.VolumeID)
}

// NodeGetCapabilities advertises VOLUME_MOUNT_GROUP: the pins are owned by
// the pod's fsGroup so non-root consumers can open them.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{Capabilities: []*csi.NodeServiceCapability{{
		Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP}},
	}}}, nil
}

// NodeGetInfo returns the node ID. bpfmount volumes have no topology and no
// per-node limit.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.opts.NodeID}, nil
}

// checkPublishRequest checks every field of a publish request, touching
// nothing outside the process.
func (d *Driver) checkPublishRequest(req *csi.NodePublishVolumeRequest) (*publishRequest, error) {
	volID, target := req.GetVolumeId(), req.GetTargetPath()
	if err := d.checkVolumeAndTarget(volID, target); err != nil {
		return nil, err
	}
	gid, err := checkCapability(req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	vr, err := parseAttributes(req.GetVolumeContext())
	if err != nil {
		return nil, err
	}
	if err := attachSecrets(vr, req.GetSecrets()); err != nil {
		return nil, err
	}
	return &publishRequest{
		volID: volID, target: target, staging: d.store.StagingPath(volID), gid: gid, vol: vr,
		readOnly: req.GetReadonly() || req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
	}, nil
}

// checkVolumeAndTarget validates the fields every node call carries.
func (d *Driver) checkVolumeAndTarget(volID, target string) error {
	if volID == "" {
		return invalid("volume_id is required")
	}
	if !state.ValidVolumeID(volID) {
		return invalid("volume_id %.80q is not a safe name: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit", volID)
	}
	if target == "" {
		return invalid("target_path is required")
	}
	if len(target) > 4096 || strings.ContainsRune(target, 0) {
		return invalid("target_path is too long or holds a NUL byte")
	}
	if !filepath.IsAbs(target) || filepath.Clean(target) != target || target == "/" {
		return invalid("target_path %.200q must be an absolute, clean path other than /", target)
	}
	for _, own := range []string{d.opts.StateDir, d.opts.BPFFSRoot} {
		if underDir(target, own) || underDir(own, target) {
			return invalid("target_path %s overlaps the driver's own directory %s", target, own)
		}
	}
	return nil
}

// checkCapability accepts a single-node mount capability with no fsType
// other than bpf and no mount flags, and returns the mount group.
func checkCapability(vc *csi.VolumeCapability) (gid string, err error) {
	if vc == nil {
		return "", invalid("volume_capability is required")
	}
	if vc.GetBlock() != nil {
		return "", invalid("block volumes are not supported: a bpfmount volume is a directory of pinned maps; use a mount volume")
	}
	mnt := vc.GetMount()
	if mnt == nil {
		return "", invalid("volume_capability must be a mount capability")
	}
	if fs := mnt.GetFsType(); fs != "" && fs != "bpf" {
		return "", invalid("fsType %.40q is not supported: bpfmount volumes are bpf filesystems; leave fsType empty", fs)
	}
	if flags := mnt.GetMountFlags(); len(flags) > 0 {
		return "", invalid("mount flags %.200q are not supported: bpfmount sets nosuid,nodev,noexec itself", strings.Join(flags, ","))
	}
	switch vc.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
	case csi.VolumeCapability_AccessMode_UNKNOWN:
		return "", invalid("volume_capability.access_mode is required")
	default:
		return "", invalid("access mode %s is not supported: bpfmount volumes are node-local; use a SINGLE_NODE mode", vc.GetAccessMode().GetMode())
	}
	gid = mnt.GetVolumeMountGroup()
	if gid != "" {
		n, err := strconv.Atoi(gid)
		if err != nil || n < 0 || n > 1<<31-1 || strconv.Itoa(n) != gid {
			return "", invalid("volume_mount_group %.40q is not a numeric group ID", gid)
		}
	}
	return gid, nil
}

// attachSecrets takes the registry credentials from the request's secrets.
func attachSecrets(vr *volumeRequest, secrets map[string]string) error {
	if len(secrets) == 0 {
		return nil
	}
	cfg, ok := secrets[dockerConfigKey]
	if !ok {
		return invalid("nodePublishSecretRef must name a kubernetes.io/dockerconfigjson Secret (with key %s)", dockerConfigKey)
	}
	vr.load.Image.DockerConfigJSON = []byte(cfg)
	return nil
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "no maps"
	}
	return strings.Join(l, ", ")
}

// report audits a publish that changed something or failed, and tells the
// pod in an event.
func (d *Driver) report(pr *publishRequest, out *publishOutcome, err error) {
	if err == nil {
		failpoint.Hit("publish.done")
	}
	audit("load", pr.volID, pr.target, pr.vol, out.rec, out.dec, err)
	pod := podRef(pr.vol.pod)
	if err != nil {
		reason := events.ReasonFailed
		if out.dec.Reason != "" && !out.dec.Allowed {
			reason = events.ReasonDenied
		}
		d.opts.Events.Warning(pod, reason, fmt.Sprintf("bpfmount could not load the program of volume %s: %s", pr.volID, clip(err.Error(), maxLogError)))
		return
	}
	rec := out.rec
	if isFrom(rec) {
		d.opts.Events.Normal(pod, events.ReasonLoaded, fmt.Sprintf("mounted the maps %s of the program named %q (id %d) for volume %s",
			strings.Join(rec.Maps, ", "), rec.Attributes[AttrFrom], rec.ProgramID, pr.volID))
		return
	}
	if pr.upgraded != nil {
		d.opts.Events.Normal(pod, events.ReasonLoaded, upgradeMessage(rec, pr.upgraded))
		return
	}
	d.opts.Events.Normal(pod, events.ReasonLoaded, fmt.Sprintf("loaded %s program %q (id %d) on %s for volume %s",
		rec.Identity.Hook, rec.Identity.Program, rec.ProgramID, targetOf(rec.Identity), pr.volID))
	klog.V(4).InfoS("Published volume", "volume", pr.volID, "target", clip(pr.target, maxLogValue), "program", rec.Identity.Program,
		"id", rec.ProgramID, "maps", rec.Maps)
}

// publishLogValues are a checked request's fields, each bounded, for the
// log. The service account tokens are never among the attributes.
func publishLogValues(pr *publishRequest) []any {
	attrs := make(map[string]string, len(pr.vol.attrs))
	for k, v := range pr.vol.attrs {
		attrs[clip(k, maxLogValue)] = clip(v, maxLogValue)
	}
	return []any{"volume", pr.volID, "target", clip(pr.target, maxLogValue), "readOnly", pr.readOnly,
		"mountGroup", pr.gid, "attributes", attrs}
}

// audit logs one structured line per load and unload decision, every value
// bounded: at the default verbosity, a publish's or unpublish's only line.
func audit(action, volID, target string, vr *volumeRequest, rec *state.Record, dec policy.Decision, err error) {
	kv := []any{"action", action, "volume", volID, "target", clip(target, maxLogValue)}
	var pod state.Pod
	switch {
	case rec != nil:
		pod = rec.Pod
		kv = append(kv, "image", clip(rec.Image, maxLogValue), "digest", rec.Identity.Digest, "program", clip(rec.Identity.Program, maxLogValue),
			"hook", rec.Identity.Hook, "interface", rec.Identity.Interface, "cgroup", clip(rec.Identity.Cgroup, maxLogValue), "priority", rec.Identity.Priority, "programID", rec.ProgramID)
	case vr != nil:
		pod = vr.pod
		kv = append(kv, "image", clip(vr.load.Image.Reference, maxLogValue), "program", clip(vr.load.Program, maxLogValue), "hook", vr.load.Hook,
			"interface", vr.load.Interface, "priority", vr.load.Priority)
	}
	kv = append(kv, "pod", clip(pod.Name, maxLogValue), "namespace", clip(pod.Namespace, maxLogValue),
		"serviceAccount", clip(pod.ServiceAccount, maxLogValue))
	if action == "load" {
		decision := "allow"
		switch {
		case !dec.Allowed && dec.Reason != "":
			decision = "deny"
		case !dec.Allowed:
			decision = "undecided" // failed before the policy was consulted
		}
		kv = append(kv, "decision", decision, "rule", dec.Rule)
	}
	if err != nil {
		kv = append(kv, "result", "error", "code", codeOf(err).String(), "error", clip(err.Error(), maxLogError))
	} else {
		kv = append(kv, "result", "ok")
	}
	klog.InfoS("Audit", kv...)
}

func podRef(p state.Pod) events.Pod {
	return events.Pod{Namespace: p.Namespace, Name: p.Name, UID: p.UID}
}

// observe records a call's duration by hook and gRPC code, both from
// closed sets.
func observe(h *prometheus.HistogramVec, hook loader.Hook, start time.Time, err error) {
	h.WithLabelValues(hookLabel(hook), codeLabel(err)).Observe(time.Since(start).Seconds())
}

// hookLabel is a known hook, "unknown" before the hook is known, or
// "invalid": a metric label never holds text a request chose.
func hookLabel(h loader.Hook) string {
	switch {
	case h == "":
		return "unknown"
	case slices.Contains(loader.Hooks, h):
		return string(h)
	}
	return "invalid"
}

// codeLabel is the name of the call's gRPC code.
func codeLabel(err error) string {
	c := codeOf(err)
	if c > codes.Unauthenticated {
		c = codes.Unknown
	}
	return c.String()
}
