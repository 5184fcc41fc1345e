package driver

import (
	"context"
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
	"google.golang.org/grpc/status"
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

// dockerConfigKey is the key of a kubernetes.io/dockerconfigjson Secret.
const dockerConfigKey = ".dockerconfigjson"

// NodePublishVolume loads, attaches and exposes the program the volume's
// attributes describe: check the request, decide on policy (after the
// fetch when the hook comes from the image's labels), resolve the image,
// write an intent, acquire the program, mount its maps, write the record.
// Every failure undoes what was done.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (resp *csi.NodePublishVolumeResponse, err error) {
	start := time.Now()
	hook := req.GetVolumeContext()[AttrType]
	defer func() { observe(metrics.PublishDuration, hook, start, err) }()
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
		return nil, toStatus(err)
	}
	if err := attachSecrets(vr, req.GetSecrets()); err != nil {
		return nil, err
	}
	readOnly := req.GetReadonly() || req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY

	unlock, ok := d.locks.tryLock(volID)
	if !ok {
		return nil, status.Errorf(codes.Aborted, "an operation on volume %q is already in progress; retry later", volID)
	}
	defer unlock()

	staging := d.store.StagingPath(volID)
	done, err := d.checkExisting(volID, target, staging, vr, readOnly, gid)
	if err != nil || done {
		return okPublish(err)
	}

	var rec *state.Record
	var dec policy.Decision
	tgt, err := d.openTarget(target)
	if err == nil {
		defer tgt.Close()
		rec, dec, err = d.publish(ctx, volID, tgt, staging, vr, readOnly, gid)
	}
	if err != nil {
		audit("load", volID, vr, nil, dec, err)
		reason := events.ReasonFailed
		if dec.Reason != "" && !dec.Allowed {
			reason = events.ReasonDenied
		}
		d.opts.Events.Warning(podRef(vr.pod), reason, fmt.Sprintf("bpfmount could not load the program of volume %s: %v", volID, err))
		return nil, toStatus(err)
	}
	hook = string(rec.Identity.Hook)
	failpoint.Hit("publish.done")
	audit("load", volID, vr, rec, dec, nil)
	d.opts.Events.Normal(podRef(vr.pod), events.ReasonLoaded, fmt.Sprintf("loaded %s program %q (id %d) on %s for volume %s",
		rec.Identity.Hook, rec.Identity.Program, rec.ProgramID, rec.Identity.Interface, volID))
	klog.V(2).InfoS("Published volume", "volume", volID, "target", target, "program", rec.Identity.Program,
		"id", rec.ProgramID, "maps", rec.Maps, "duration", time.Since(start))
	return &csi.NodePublishVolumeResponse{}, nil
}

func okPublish(err error) (*csi.NodePublishVolumeResponse, error) {
	if err != nil {
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// publish does the node-changing part of NodePublishVolume.
func (d *Driver) publish(ctx context.Context, volID string, tgt *mapfs.Target, staging string, vr *volumeRequest, readOnly bool, gid string) (_ *state.Record, dec policy.Decision, err error) {
	// Decide before fetching when the hook is known, so a denied pod
	// cannot make the node pull anything; otherwise the image's labels
	// name the hook and the decision follows the fetch.
	if vr.load.Hook != "" {
		if dec, err = d.decide(vr, vr.load.Hook, readOnly); err != nil {
			return nil, dec, err
		}
	}
	res, err := d.loader.Resolve(ctx, vr.load)
	if err != nil {
		return nil, dec, err
	}
	if vr.load.Hook == "" {
		if dec, err = d.decide(vr, res.Identity.Hook, readOnly); err != nil {
			return nil, dec, err
		}
	}
	if dec.RequireSignature && !res.Image.Signed {
		return nil, dec, fault.Errorf(fault.PermissionDenied, "image %q is not signed by a trusted key, and policy rule %q requires a signature", vr.load.Image.Reference, dec.Rule)
	}
	rec, err := d.attach(ctx, volID, tgt, staging, vr, res, readOnly, gid)
	return rec, dec, err
}

// decide applies the node policy.
func (d *Driver) decide(vr *volumeRequest, hook loader.Hook, readOnly bool) (policy.Decision, error) {
	dec := d.opts.Policy.Current().Decide(policy.Request{
		Local:          vr.pod.Namespace == "",
		Namespace:      vr.pod.Namespace,
		ServiceAccount: vr.pod.ServiceAccount,
		Pod:            vr.pod.Name,
		Image:          vr.load.Image.Reference,
		Interface:      vr.load.Interface,
		Hook:           string(hook),
		Priority:       vr.load.Priority,
		ReadOnly:       readOnly,
	})
	if !dec.Allowed {
		metrics.PolicyDenials.WithLabelValues(vr.pod.Namespace).Inc()
		return dec, fault.Errorf(fault.PermissionDenied, "%s", dec.Reason)
	}
	return dec, nil
}

// attach does the node-changing part of a publish.
func (d *Driver) attach(ctx context.Context, volID string, tgt *mapfs.Target, staging string, vr *volumeRequest, res *loader.Resolved, readOnly bool, gid string) (_ *state.Record, err error) {
	maps := vr.maps
	if maps == nil {
		maps = res.Maps
	}
	for _, m := range maps {
		if !slices.Contains(res.Maps, m) {
			return nil, invalid("map %q not in image %q (it holds: %s)", m, vr.load.Image.Reference, listOrNone(res.Maps))
		}
	}
	key := res.Identity.Key()
	target := tgt.Path
	intent := &state.Intent{Op: state.OpPublish, VolumeID: volID, TargetPath: target, StagingPath: staging, Key: key, Started: time.Now(), CreateTarget: !tgt.Existed}
	if err := d.store.PutIntent(intent); err != nil {
		return nil, fmt.Errorf("writing intent: %w", err)
	}
	failpoint.Hit("publish.intent")
	defer func() {
		// The intent goes when the operation ends: on success the record
		// is the truth, on failure the rollback below has run.
		if rmErr := d.store.DeleteIntent(volID); rmErr != nil && err == nil {
			err = rmErr
		}
	}()

	prog, err := d.loader.Acquire(ctx, res, volID)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if relErr := d.loader.Release(key, volID); relErr != nil {
				klog.ErrorS(relErr, "Rolling back publish: releasing program", "volume", volID)
			}
		}
	}()

	selected := make(map[string]*ebpf.Map, len(maps))
	for _, m := range maps {
		selected[m] = prog.Maps[m]
	}
	gidNum := -1
	if gid != "" {
		gidNum, _ = strconv.Atoi(gid)
	}
	made, err := mapfs.Expose(staging, tgt, selected, mapfs.Options{ReadOnly: readOnly, GID: gidNum})
	if err != nil {
		return nil, fmt.Errorf("mounting the maps of volume %q at %s: %w", volID, target, err)
	}
	rec := &state.Record{
		VolumeID: volID, TargetPath: target, StagingPath: staging, ReadOnly: readOnly, MountGroup: gid,
		Attributes: vr.attrs, Image: vr.load.Image.Reference, Signed: res.Image.Signed,
		Identity: res.Identity, Key: key, ProgramID: uint32(prog.ID), Maps: maps, Pod: vr.pod, Created: time.Now().UTC(),
		Mount: made,
	}
	if err := d.store.Put(rec); err != nil {
		if wErr := mapfs.Withdraw(staging, target, made); wErr != nil {
			klog.ErrorS(wErr, "Rolling back publish: unmounting", "volume", volID)
		}
		return nil, fmt.Errorf("writing volume record: %w", err)
	}
	failpoint.Hit("publish.record")
	return rec, nil
}

// checkExisting implements publish idempotency from what is really mounted.
// done is true when the volume is already published as asked.
func (d *Driver) checkExisting(volID, target, staging string, vr *volumeRequest, readOnly bool, gid string) (done bool, err error) {
	rec, err := d.store.Get(volID)
	if err != nil {
		return false, status.Errorf(codes.Internal, "reading the record of volume %q: %v", volID, err)
	}
	tm, err := mapfs.Inspect(target)
	if err != nil {
		return false, status.Error(codes.Internal, err.Error())
	}
	if rec != nil && rec.TargetPath != target {
		return false, status.Errorf(codes.FailedPrecondition, "volume %q is already published at %s; unpublish it there first", volID, rec.TargetPath)
	}
	if tm.Mounted && tm.FSType != "bpf" {
		return false, status.Errorf(codes.FailedPrecondition, "target %s already has a %s filesystem mounted; bpfmount mounts only onto an empty directory", target, tm.FSType)
	}
	if rec == nil {
		if tm.Mounted {
			return false, status.Errorf(codes.AlreadyExists, "target %s already holds another bpf filesystem, not volume %q", target, volID)
		}
		return false, nil
	}
	sm, err := mapfs.Inspect(staging)
	if err != nil {
		return false, status.Error(codes.Internal, err.Error())
	}
	if tm.Mounted && sm.Mounted && tm.Dev == sm.Dev && rec.Broken == "" && (!rec.ReadOnly || tm.ReadOnly && sm.SuperReadOnly) {
		if !sameRequest(rec, vr, readOnly, gid) {
			return false, status.Errorf(codes.AlreadyExists, "volume %q is already published at %s with different attributes or read-only flag; unpublish it first", volID, target)
		}
		return true, nil
	}
	// The record says published but the mounts are not all there or not
	// read-only as recorded (a crash, someone unmounted by hand), or its
	// program was lost (a reboot, damaged pins): start over cleanly.
	klog.InfoS("Volume record without its mounts; publishing again", "volume", volID, "target", target)
	if err := d.unpublish(rec); err != nil {
		return false, toStatus(err)
	}
	return false, nil
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
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (resp *csi.NodeUnpublishVolumeResponse, err error) {
	start := time.Now()
	hook := ""
	defer func() { observe(metrics.UnpublishDuration, hook, start, err) }()
	volID, target := req.GetVolumeId(), req.GetTargetPath()
	if err := d.checkVolumeAndTarget(volID, target); err != nil {
		return nil, err
	}
	unlock, ok := d.locks.tryLock(volID)
	if !ok {
		return nil, status.Errorf(codes.Aborted, "an operation on volume %q is already in progress; retry later", volID)
	}
	defer unlock()

	rec, err := d.store.Get(volID)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "reading the record of volume %q: %v", volID, err)
	}
	if rec != nil {
		hook = string(rec.Identity.Hook)
	}
	if rec == nil || rec.TargetPath != target {
		// Unknown volume, or a target this volume was never published at:
		// make sure nothing of ours is mounted there, and succeed.
		if err := d.withdrawUnknown(volID, target, rec != nil); err != nil {
			return nil, toStatus(err)
		}
		return &csi.NodeUnpublishVolumeResponse{}, nil
	}
	if err := d.unpublish(rec); err != nil {
		return nil, toStatus(err)
	}
	audit("unload", volID, nil, rec, policy.Decision{}, nil)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// unpublish tears down a recorded volume: intent, unmount, release, record.
func (d *Driver) unpublish(rec *state.Record) error {
	intent := &state.Intent{Op: state.OpUnpublish, VolumeID: rec.VolumeID, TargetPath: rec.TargetPath, StagingPath: rec.StagingPath, Key: rec.Key, Started: time.Now()}
	if err := d.store.PutIntent(intent); err != nil {
		return fmt.Errorf("writing intent: %w", err)
	}
	failpoint.Hit("unpublish.intent")
	if err := d.withdrawRecord(rec); err != nil {
		return fmt.Errorf("unmounting volume %q: %w", rec.VolumeID, err)
	}
	if err := d.loader.Release(rec.Key, rec.VolumeID); err != nil {
		return fmt.Errorf("releasing the program of volume %q: %w", rec.VolumeID, err)
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

// checkVolumeAndTarget validates the fields every node call carries.
func (d *Driver) checkVolumeAndTarget(volID, target string) error {
	if volID == "" {
		return status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if !state.ValidVolumeID(volID) {
		return status.Errorf(codes.InvalidArgument, "volume_id %.80q is not a safe name: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit", volID)
	}
	if target == "" {
		return status.Error(codes.InvalidArgument, "target_path is required")
	}
	if len(target) > 4096 || strings.ContainsRune(target, 0) {
		return status.Error(codes.InvalidArgument, "target_path is too long or holds a NUL byte")
	}
	if !filepath.IsAbs(target) || filepath.Clean(target) != target || target == "/" {
		return status.Errorf(codes.InvalidArgument, "target_path %.200q must be an absolute, clean path other than /", target)
	}
	for _, own := range []string{d.opts.StateDir, d.opts.BPFFSRoot} {
		if underDir(target, own) || underDir(own, target) {
			return status.Errorf(codes.InvalidArgument, "target_path %s overlaps the driver's own directory %s", target, own)
		}
	}
	return nil
}

// checkCapability accepts a single-node mount capability with no fsType
// other than bpf and no mount flags, and returns the mount group.
func checkCapability(vc *csi.VolumeCapability) (gid string, err error) {
	if vc == nil {
		return "", status.Error(codes.InvalidArgument, "volume_capability is required")
	}
	if vc.GetBlock() != nil {
		return "", status.Error(codes.InvalidArgument, "block volumes are not supported: a bpfmount volume is a directory of pinned maps; use a mount volume")
	}
	mnt := vc.GetMount()
	if mnt == nil {
		return "", status.Error(codes.InvalidArgument, "volume_capability must be a mount capability")
	}
	if fs := mnt.GetFsType(); fs != "" && fs != "bpf" {
		return "", status.Errorf(codes.InvalidArgument, "fsType %q is not supported: bpfmount volumes are bpf filesystems; leave fsType empty", fs)
	}
	if len(mnt.GetMountFlags()) > 0 {
		return "", status.Errorf(codes.InvalidArgument, "mount flags %q are not supported: bpfmount sets nosuid,nodev,noexec itself", mnt.GetMountFlags())
	}
	switch vc.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
	case csi.VolumeCapability_AccessMode_UNKNOWN:
		return "", status.Error(codes.InvalidArgument, "volume_capability.access_mode is required")
	default:
		return "", status.Errorf(codes.InvalidArgument, "access mode %s is not supported: bpfmount volumes are node-local; use a SINGLE_NODE mode", vc.GetAccessMode().GetMode())
	}
	gid = mnt.GetVolumeMountGroup()
	if gid != "" {
		n, err := strconv.Atoi(gid)
		if err != nil || n < 0 || n > 1<<31-1 || strconv.Itoa(n) != gid {
			return "", status.Errorf(codes.InvalidArgument, "volume_mount_group %.40q is not a numeric group ID", gid)
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
		return status.Errorf(codes.InvalidArgument, "nodePublishSecretRef must name a kubernetes.io/dockerconfigjson Secret (with key %s)", dockerConfigKey)
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

// audit logs one structured line per load and unload decision.
func audit(action, volID string, vr *volumeRequest, rec *state.Record, dec policy.Decision, err error) {
	kv := []any{"action", action, "volume", volID}
	var pod state.Pod
	switch {
	case rec != nil:
		pod = rec.Pod
		kv = append(kv, "image", rec.Image, "digest", rec.Identity.Digest, "program", rec.Identity.Program,
			"hook", rec.Identity.Hook, "interface", rec.Identity.Interface, "priority", rec.Identity.Priority, "programID", rec.ProgramID)
	case vr != nil:
		pod = vr.pod
		kv = append(kv, "image", vr.load.Image.Reference, "program", vr.load.Program, "hook", vr.load.Hook,
			"interface", vr.load.Interface, "priority", vr.load.Priority)
	}
	kv = append(kv, "pod", pod.Name, "namespace", pod.Namespace, "serviceAccount", pod.ServiceAccount)
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
		kv = append(kv, "result", "error", "code", codeOf(err).String(), "error", err.Error())
	} else {
		kv = append(kv, "result", "ok")
	}
	klog.InfoS("Audit", kv...)
}

func podRef(p state.Pod) events.Pod {
	return events.Pod{Namespace: p.Namespace, Name: p.Name, UID: p.UID}
}

// observe records a call's duration by hook and gRPC code.
func observe(h *prometheus.HistogramVec, hook string, start time.Time, err error) {
	if hook == "" {
		hook = "unknown"
	}
	h.WithLabelValues(hook, codeOf(err).String()).Observe(time.Since(start).Seconds())
}
