package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/mapfs"
	"github.com/bpfmount/bpfmount/loader"
)

// Maintain runs until ctx is done: it follows interface removals (marking
// their programs detached) and collects garbage every interval.
func (d *Driver) Maintain(ctx context.Context, interval time.Duration) {
	go func() {
		lost := func(p *loader.Program) { metrics.InterfaceLost.Inc() }
		if err := d.loader.WatchInterfaces(ctx, lost); err != nil {
			klog.ErrorS(err, "Cannot follow interface removals; detached programs are noticed at the next collection")
		}
	}()
	go d.expireAtDeadlines(ctx)
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.CollectGarbage()
		}
	}
}

// CollectGarbage removes staging mounts and pins under the driver's own
// directories that no volume owns. Volumes with an operation in flight are
// skipped; nothing outside the driver's directories is touched.
func (d *Driver) CollectGarbage() (staging, pins []string) {
	d.expireLingers(time.Now())
	ents, err := os.ReadDir(d.store.MountsDir())
	if err != nil {
		klog.ErrorS(err, "Garbage collection: reading staging directories")
	}
	// The intents are read once, not once per staging directory. One
	// written after this read is for a volume whose lock its operation
	// holds, so tryLock below skips that volume.
	intents, intentErr := d.store.Intents()
	kept := make(map[string]bool, len(intents))
	for _, in := range intents {
		kept[in.VolumeID] = true
	}
	for _, de := range ents {
		vol := de.Name()
		if !state.ValidVolumeID(vol) {
			continue
		}
		unlock, ok := d.locks.tryLock(vol)
		if !ok {
			continue // a publish or unpublish owns it right now
		}
		rec, err := d.store.Get(vol)
		if err == nil && rec == nil && !kept[vol] {
			dir := filepath.Join(d.store.MountsDir(), vol)
			if !d.unmountOrphanTargets(vol, dir) {
				unlock()
				continue // kept until its targets are unmounted
			}
			if err := mapfs.Withdraw(dir, "", mapfs.Made{}); err != nil {
				klog.ErrorS(err, "Garbage collection: removing a staging mount", "volume", vol)
			} else {
				staging = append(staging, vol)
			}
		}
		unlock()
	}
	// Every record's pins are kept, broken ones too (their unpublish
	// removes them), and so are those of kept intents. When a record cannot
	// be read, its pins are unknown: none is removed.
	recs, listErr := d.store.List()
	lingers, lingerErr := d.lingerKeys()
	nodeKeys, nodeErr := d.nodeProgramKeys()
	if listErr != nil || intentErr != nil || lingerErr != nil || nodeErr != nil {
		klog.ErrorS(errors.Join(listErr, intentErr, lingerErr, nodeErr), "Garbage collection: some records or intents cannot be read; no pins are removed until they are fixed or removed")
		return staging, nil
	}
	keep := make([]string, 0, len(recs)+len(intents)+len(lingers))
	keep = append(keep, lingers...)
	keep = append(keep, nodeKeys...)
	if ups, err := d.store.Upgrades(); err == nil {
		for _, u := range ups { // kept: the next start finishes or undoes it
			keep = append(keep, u.From.Key(), u.To.Key())
		}
	} else {
		klog.ErrorS(err, "Garbage collection: some upgrade records cannot be read; no pins are removed")
		return staging, nil
	}
	for _, r := range recs {
		keep = append(keep, r.Key)
	}
	for _, in := range intents {
		if in.Key != "" {
			keep = append(keep, in.Key)
		}
	}
	pins, err = d.loader.Prune(keep...)
	if err != nil {
		klog.ErrorS(err, "Garbage collection: removing pins")
	}
	if len(staging)+len(pins) > 0 {
		klog.InfoS("Collected garbage", "stagingMounts", staging, "pins", pins)
	}
	return staging, pins
}

// unmountOrphanTargets unmounts the targets an orphaned volume's bpffs
// instance (mounted at staging) is bound to below the target roots, before
// its staging mount goes: after that nothing ties them to the driver, and
// kubelet cannot remove a mounted target. It reports whether the staging
// mount may go.
func (d *Driver) unmountOrphanTargets(vol, staging string) bool {
	roots, err := targetRoots(d.opts.TargetRoots)
	if err != nil {
		klog.ErrorS(err, "Garbage collection: the target roots are invalid; an orphaned volume's targets are left mounted", "volume", vol)
		return true
	}
	targets, err := mapfs.UnmountBinds(staging, roots)
	for _, t := range targets {
		klog.InfoS("Garbage collection: unmounted an orphaned volume's target (the volume has no record)", "volume", vol, "target", clip(t, maxLogValue))
	}
	if err != nil {
		klog.ErrorS(err, "Garbage collection: unmounting an orphaned volume's targets; its staging mount is kept until the next collection", "volume", vol)
		return false
	}
	return true
}
