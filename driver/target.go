package driver

import (
	"fmt"
	"path/filepath"

	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/mapfs"
)

// DefaultTargetRoots are where targets may lie when Options.TargetRoots is
// empty: kubelet's pods directory (its default root) and /run/bpf, where
// single-host examples publish.
var DefaultTargetRoots = []string{"/var/lib/kubelet/pods", "/run/bpf"}

// targetRoots returns the allowed target roots, absolute and clean.
func targetRoots(roots []string) ([]string, error) {
	if len(roots) == 0 {
		roots = DefaultTargetRoots
	}
	out := make([]string, 0, len(roots))
	for _, r := range roots {
		if !filepath.IsAbs(r) {
			return nil, fmt.Errorf("driver: target root %q is not an absolute path", r)
		}
		out = append(out, filepath.Clean(r))
	}
	return out, nil
}

// withdrawUnknown answers an unpublish for which no record matches (an
// unknown volume, or a target the volume was never published at). Nothing
// at the target is touched unless it is this volume's own bpffs instance,
// still mounted at its staging directory (a crash before the record was
// written), or, for a volume with no record and no intent, an orphaned
// volume's bpffs (a volume whose record was lost: see withdrawOrphan). A
// directory is never removed, as there is no record saying the driver
// created it; kubelet removes it.
func (d *Driver) withdrawUnknown(volID, target string, recorded bool) error {
	if recorded {
		// The volume's staging mount and target belong to its record,
		// elsewhere: nothing at this target is the volume's.
		klog.InfoS("Unpublish at a target the volume was never published at; nothing to do", "volume", volID, "target", clip(target, maxLogValue))
		return nil
	}
	if err := d.mounts.Withdraw(d.store.StagingPath(volID), target, mapfs.Made{}); err != nil {
		return err
	}
	return d.withdrawOrphan(volID, target)
}

// withdrawOrphan unmounts from the target of a volume with no record a
// bpffs the driver made for a volume whose record is lost: one mounted only
// below the target roots (its staging mount is gone, removed by garbage
// collection or by hand), with the options the driver gives a volume's
// mounts, whose device no record names (mapfs.WithdrawOrphan). kubelet cannot
// remove a mounted target, so leaving it would keep the pod Terminating
// forever. Anything else mounted there is never unmounted and fails the
// call with FailedPrecondition. A volume with an intent is left to it: its
// interrupted operation owns what is at the target.
func (d *Driver) withdrawOrphan(volID, target string) error {
	if m, err := mapfs.Inspect(target); err == nil && !m.Mounted {
		return nil // the usual case (a repeated unpublish): no more to read
	}
	intents, err := d.store.Intents()
	if err != nil {
		klog.ErrorS(err, "Unpublish of a volume with no record: some intents cannot be read; nothing more is unmounted at its target", "volume", volID)
		return nil
	}
	for _, in := range intents {
		if in.VolumeID == volID {
			return nil
		}
	}
	// Unreadable records leave their devices out; their staging mounts,
	// if any, still mark their instances as live.
	recs, err := d.store.List()
	if err != nil {
		klog.ErrorS(err, "Unpublish of a volume with no record: some records cannot be read", "volume", volID)
	}
	live := make([]uint64, 0, len(recs))
	for _, r := range recs {
		if r.Mount.Dev != 0 {
			live = append(live, r.Mount.Dev)
		}
	}
	roots, err := targetRoots(d.opts.TargetRoots)
	if err != nil {
		return err
	}
	n, err := mapfs.WithdrawOrphan(target, mapfs.Orphans{Staging: d.store.MountsDir(), Roots: roots, Live: live})
	if n > 0 {
		klog.InfoS("Unmounted an orphaned volume's bpffs from its target (its record was lost)", "volume", volID, "target", clip(target, maxLogValue), "mounts", n)
	}
	return err
}

// withdrawRecord removes what a record says its publish made. The staging
// path is recomputed from the volume ID, never taken from the file.
func (d *Driver) withdrawRecord(rec *state.Record) error {
	return d.mounts.Withdraw(d.store.StagingPath(rec.VolumeID), rec.TargetPath, rec.Mount)
}
