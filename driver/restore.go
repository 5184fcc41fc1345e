package driver

import (
	"context"

	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/internal/mapfs"
)

// RestoreReport says what Restore found.
type RestoreReport struct {
	Volumes    int      // records adopted
	Vanished   []string // volumes whose pins were gone
	Detached   []string // volumes whose program lost its interface
	RolledBack []string // publishes interrupted by a crash, undone
	Completed  []string // unpublishes interrupted by a crash, finished
	Pruned     []string // pin directories no volume owned
	Staging    []string // staging mounts no volume owned
}

// Restore rebuilds the driver's view from its records and the pins before
// it serves calls: it re-adopts every recorded attachment, finishes or
// rolls back operations a crash interrupted, and removes pins and staging
// mounts no volume owns. It then marks the driver ready.
func (d *Driver) Restore(ctx context.Context) (*RestoreReport, error) {
	rep := &RestoreReport{}
	records, err := d.store.List()
	if err != nil {
		klog.ErrorS(err, "Some volume records could not be read; they are ignored")
	}
	for _, rec := range records {
		p, err := d.loader.Adopt(rec.Identity, rec.VolumeID)
		if err != nil {
			if fault.Of(err) == fault.NotFound {
				// The pins are gone (removed by hand, or a reboot kept
				// /run): the maps the volume exposed are gone with them.
				klog.InfoS("Volume's program vanished; its record is kept until unpublish", "volume", rec.VolumeID, "err", err)
				rep.Vanished = append(rep.Vanished, rec.VolumeID)
				continue
			}
			return nil, err
		}
		if !p.Attached {
			klog.InfoS("Volume's program lost its interface; its maps stay mounted", "volume", rec.VolumeID, "interface", rec.Identity.Interface)
			rep.Detached = append(rep.Detached, rec.VolumeID)
		}
		rep.Volumes++
	}

	intents, err := d.store.Intents()
	if err != nil {
		klog.ErrorS(err, "Some intents could not be read; they are ignored")
	}
	for _, in := range intents {
		rec, _ := d.store.Get(in.VolumeID)
		switch {
		case in.Op == state.OpUnpublish && rec != nil:
			// Finish what the unpublish started: the kubelet asked for it.
			if err := d.unpublish(rec); err != nil {
				return nil, err
			}
			rep.Completed = append(rep.Completed, in.VolumeID)
		case in.Op == state.OpPublish && rec == nil:
			// The publish never wrote its record: kubelet was not told it
			// succeeded, so undo it; the retry starts afresh.
			if err := mapfs.Withdraw(in.StagingPath, in.TargetPath); err != nil {
				return nil, err
			}
			rep.RolledBack = append(rep.RolledBack, in.VolumeID)
		}
		if err := d.store.DeleteIntent(in.VolumeID); err != nil {
			return nil, err
		}
	}

	// What is left: staging mounts and pins no record owns.
	rep.Staging, rep.Pruned = d.CollectGarbage()
	d.ready.Store(true)
	klog.InfoS("Restored state", "volumes", rep.Volumes, "vanished", len(rep.Vanished), "detached", len(rep.Detached),
		"rolledBack", len(rep.RolledBack), "completed", len(rep.Completed), "prunedPins", len(rep.Pruned), "orphanedMounts", len(rep.Staging))
	return rep, ctx.Err()
}
