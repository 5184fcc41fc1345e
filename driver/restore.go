package driver

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver/events"
	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/internal/mapfs"
)

// RestoreReport says what Restore found.
type RestoreReport struct {
	Volumes      int      // records adopted
	Vanished     []string // volumes whose pins were gone (marked broken)
	Broken       []string // volumes whose pins could not be re-opened (marked broken)
	Detached     []string // volumes whose program lost its interface
	RolledBack   []string // publishes interrupted by a crash, undone
	Completed    []string // unpublishes interrupted by a crash, finished
	Kept         []string // interrupted operations left as found (their record is unreadable, or finishing failed)
	Unreadable   int      // record or intent files that could not be decoded (kept as found)
	Pruned       []string // pin directories no volume owned
	Staging      []string // staging mounts no volume owned
	Lingering    []string // keys of programs kept attached past their last volume (keepAttached), re-adopted
	NodePrograms []string // node programs (the programs file) re-adopted
}

// Restore rebuilds the driver's view from its records and the pins before
// it serves calls: it re-adopts every recorded attachment, finishes or
// rolls back operations a crash interrupted, and removes pins and staging
// mounts no volume owns. It then marks the driver ready.
//
// One bad volume never stops the node: a volume that cannot be restored is
// logged, counted (bpfmount_restore_errors_total), reported on its pod,
// marked broken in its record and left for its unpublish, and the driver
// goes on. Only a cancelled ctx fails Restore.
func (d *Driver) Restore(ctx context.Context) (*RestoreReport, error) {
	rep := &RestoreReport{}
	d.recoverUpgrades() // before anything is adopted: it moves pins
	records, err := d.store.List()
	if err != nil {
		n := countErrors(err)
		rep.Unreadable += n
		metrics.RestoreErrors.Add(float64(n))
		klog.ErrorS(err, "Some volume records could not be read; they, their mounts and their pins are kept as found")
	}
	for _, rec := range records {
		if rec.Broken != "" {
			rep.Broken = append(rep.Broken, rec.VolumeID)
			continue // marked at an earlier start; its unpublish cleans up
		}
		if isFrom(rec) {
			d.restoreFrom(rec, rep)
			continue
		}
		p, err := d.loader.Adopt(rec.Identity, rec.VolumeID)
		if err != nil {
			d.markBroken(rec, err, rep)
			continue
		}
		if staging := d.store.StagingPath(rec.VolumeID); rec.ReadOnly && !sealed(staging) {
			// A read-only volume published by a version that left its
			// bpffs writable: seal it now.
			if err := mapfs.SealReadOnly(staging); err != nil {
				klog.ErrorS(err, "Cannot make a read-only volume's filesystem read-only", "volume", rec.VolumeID)
			}
		}
		if uint32(p.ID) != rec.ProgramID {
			// An upgrade finished by recoverUpgrades: the record learns
			// its new program's ID.
			rec.ProgramID = uint32(p.ID)
			if err := d.store.Put(rec); err != nil {
				klog.ErrorS(err, "Updating a volume's program ID", "volume", rec.VolumeID)
			}
		}
		if !p.Attached && !rec.Identity.Deferred() {
			klog.InfoS("Volume's program lost its interface; its maps stay mounted", "volume", rec.VolumeID, "interface", rec.Identity.Interface)
			rep.Detached = append(rep.Detached, rec.VolumeID)
		}
		d.startDeferred(rec, p, false)
		rep.Volumes++
	}

	d.restoreLingers(rep)
	d.restoreNodePrograms(rep)

	intents, err := d.store.Intents()
	if err != nil {
		n := countErrors(err)
		rep.Unreadable += n
		metrics.RestoreErrors.Add(float64(n))
		klog.ErrorS(err, "Some intents could not be read; they are kept as found")
	}
	for _, in := range intents {
		if err := d.finishIntent(in, rep); err != nil {
			metrics.RestoreErrors.Inc()
			rep.Kept = append(rep.Kept, in.VolumeID)
			klog.ErrorS(err, "Could not finish an interrupted operation; it is kept and the driver goes on", "volume", in.VolumeID, "op", in.Op)
		}
	}

	// What is left: staging mounts and pins no record owns.
	rep.Staging, rep.Pruned = d.CollectGarbage()
	d.ready.Store(true)
	klog.InfoS("Restored state", "volumes", rep.Volumes, "vanished", len(rep.Vanished), "broken", len(rep.Broken), "detached", len(rep.Detached),
		"rolledBack", len(rep.RolledBack), "completed", len(rep.Completed), "kept", len(rep.Kept), "unreadable", rep.Unreadable,
		"prunedPins", len(rep.Pruned), "orphanedMounts", len(rep.Staging))
	return rep, ctx.Err()
}

// markBroken records that a volume's program could not be re-adopted. Its
// program ID goes, so nothing reports a program that is not in the kernel.
func (d *Driver) markBroken(rec *state.Record, adoptErr error, rep *RestoreReport) {
	if fault.Of(adoptErr) == fault.NotFound {
		// The pins are gone (a reboot, or removed by hand): the maps the
		// volume exposed are gone with them.
		klog.InfoS("Volume's program vanished; its record is kept until unpublish, a publish loads it afresh", "volume", rec.VolumeID, "err", adoptErr)
		rep.Vanished = append(rep.Vanished, rec.VolumeID)
		rec.Broken = "program gone: " + adoptErr.Error()
	} else {
		klog.ErrorS(adoptErr, "Cannot re-adopt a volume's program; the volume is marked broken and the driver goes on", "volume", rec.VolumeID)
		metrics.RestoreErrors.Inc()
		rep.Broken = append(rep.Broken, rec.VolumeID)
		rec.Broken = "pins damaged: " + adoptErr.Error()
		if rec.Pod.Name != "" {
			d.opts.Events.Warning(podRef(rec.Pod), events.ReasonFailed, fmt.Sprintf(
				"bpfmount could not restore the program of volume %s after a restart: %v; delete the pod to unload what is left", rec.VolumeID, adoptErr))
		}
	}
	rec.ProgramID = 0
	if err := d.store.Put(rec); err != nil {
		metrics.RestoreErrors.Inc()
		klog.ErrorS(err, "Marking a volume broken", "volume", rec.VolumeID)
	}
}

// finishIntent finishes or rolls back one interrupted operation. On error
// the intent stays, so nothing is lost for the next start or an operator.
func (d *Driver) finishIntent(in *state.Intent, rep *RestoreReport) error {
	rec, err := d.store.Get(in.VolumeID)
	if err != nil {
		// A record exists but cannot be read: the intent could undo a
		// published volume's mounts. Keep both as found.
		return fmt.Errorf("reading the record of volume %q: %w", in.VolumeID, err)
	}
	switch {
	case in.Op == state.OpUnpublish && rec != nil:
		// Finish what the unpublish started: the kubelet asked for it.
		if err := d.unpublish(rec); err != nil {
			return err
		}
		rep.Completed = append(rep.Completed, in.VolumeID)
		return nil // unpublish removed the intent
	case in.Op == state.OpPublish && rec == nil:
		// The publish never wrote its record: kubelet was not told it
		// succeeded, so undo it; the retry starts afresh. Only the
		// volume's own instance is unmounted from the target, and the
		// target directory goes only if the publish created it.
		if err := mapfs.Withdraw(d.store.StagingPath(in.VolumeID), in.TargetPath, mapfs.Made{TargetCreated: in.CreateTarget}); err != nil {
			return err
		}
		rep.RolledBack = append(rep.RolledBack, in.VolumeID)
	}
	return d.store.DeleteIntent(in.VolumeID)
}

// sealed reports whether a read-only bpffs is mounted at staging, as every
// read-only volume's is since it was published: one statfs, where sealing
// again looks the mount up and remounts it (a fifth of a restart's CPU with
// 500 read-only volumes).
func sealed(staging string) bool {
	var st unix.Statfs_t
	return unix.Statfs(staging, &st) == nil && st.Type == unix.BPF_FS_MAGIC && st.Flags&unix.ST_RDONLY != 0
}

// countErrors counts the errors joined in err.
func countErrors(err error) int {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return len(j.Unwrap())
	}
	if err == nil {
		return 0
	}
	return 1
}
