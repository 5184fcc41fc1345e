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
// written); a directory is never removed, as there is no record saying the
// driver created it.
func (d *Driver) withdrawUnknown(volID, target string, recorded bool) error {
	if recorded {
		// The volume's staging mount and target belong to its record,
		// elsewhere: nothing at this target is the volume's.
		klog.InfoS("Unpublish at a target the volume was never published at; nothing to do", "volume", volID, "target", target)
		return nil
	}
	return d.mounts.Withdraw(d.store.StagingPath(volID), target, mapfs.Made{})
}

// withdrawRecord removes what a record says its publish made. The staging
// path is recomputed from the volume ID, never taken from the file.
func (d *Driver) withdrawRecord(rec *state.Record) error {
	return d.mounts.Withdraw(d.store.StagingPath(rec.VolumeID), rec.TargetPath, rec.Mount)
}
