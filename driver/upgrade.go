package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader"
)

// An upgrade in place: a load under a name whose program another version
// (image digest, globals) holds on the same hook replaces that program
// where it runs (loader.Replace). The older version's volumes keep their
// mounts and now hold the new program: their records follow it, so the
// name's program detaches when the last volume of any version goes (after
// keepAttached). An upgrade record in the state directory lets a restart
// finish or undo an upgrade a crash interrupted.

// acquire gets the publish's program: a plain Acquire, or an upgrade of
// the program pr.upgradeFrom names.
func (d *Driver) acquire(ctx context.Context, pr *publishRequest, res *loader.Resolved) (*loader.Program, error) {
	h := pr.upgradeFrom
	if h == nil {
		return d.loader.Acquire(ctx, res, pr.volID)
	}
	// The older version's volumes must not change meanwhile.
	recs, err := d.store.List()
	if err != nil {
		return nil, fmt.Errorf("reading the volume records of the program to upgrade: %w", err)
	}
	name := pr.vol.life.name
	for _, r := range recs {
		if r.Key != h.key || r.VolumeID == pr.volID {
			continue
		}
		if r.Attributes[AttrName] != name {
			// The identical request without the name (or under another)
			// shares the program: the name does not cover it.
			return nil, fault.Errorf(fault.Precondition, "cannot upgrade the program named %q in place: volume %s shares it without that name; unpublish it or use another name",
				name, r.VolumeID)
		}
		unlock, ok := d.locks.tryLock(r.VolumeID)
		if !ok {
			return nil, fault.Errorf(fault.Aborted, "volume %q of the program being upgraded is busy; retry later", r.VolumeID)
		}
		defer unlock()
	}
	l, err := d.store.GetLinger(h.key)
	if err != nil {
		return nil, fmt.Errorf("reading the linger record of the program to upgrade: %w", err)
	}
	if l != nil && l.Name != name {
		return nil, fault.Errorf(fault.Precondition, "cannot upgrade the program named %q in place: it lingers under another name (or none); wait out its keepAttached or use another name", name)
	}
	up := &state.Upgrade{From: h.id, To: res.Identity}
	if err := d.store.PutUpgrade(up); err != nil {
		return nil, fmt.Errorf("recording the upgrade of %q: %w", h.id.Program, err)
	}
	failpoint.Hit("upgrade.recorded")
	prog, rep, err := d.loader.Replace(ctx, h.key, res, pr.volID)
	if err != nil {
		return nil, errors.Join(err, d.store.DeleteUpgrade(res.Identity.Key()))
	}
	failpoint.Hit("upgrade.replaced")
	if err := d.followUpgrade(up, uint32(prog.ID)); err != nil {
		// The program is replaced; the records are fixed at the next
		// start from the upgrade record, which stays.
		klog.ErrorS(err, "Updating the records of an upgraded program; finished at the next start", "program", clip(res.Identity.Program, maxLogValue))
	}
	pr.upgraded = rep
	return prog, nil
}

// followUpgrade points the records of the replaced program (its volumes,
// its linger record and the driver's hold) at the new one, then removes
// the upgrade record.
func (d *Driver) followUpgrade(up *state.Upgrade, progID uint32) error {
	from, to := up.From.Key(), up.To.Key()
	recs, err := d.store.List()
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.Key != from {
			continue
		}
		r.Key, r.Identity, r.ProgramID = to, up.To, progID
		if err := d.store.Put(r); err != nil {
			return err
		}
	}
	d.lingerMu.Lock()
	l, err := d.store.GetLinger(from)
	if err == nil && l != nil {
		moved := &state.Linger{Key: to, Identity: up.To, ProgramID: progID, Deadline: l.Deadline, Name: l.Name}
		if err = d.store.PutLinger(moved); err == nil {
			// The loader moved the old hold with the program: rename it.
			if d.loader.Hold(to, lingerOwner(to)) {
				err = d.loader.Release(to, lingerOwner(from))
			}
			err = errors.Join(err, d.store.DeleteLinger(from))
		}
	}
	d.lingerMu.Unlock()
	if err != nil {
		return err
	}
	return d.store.DeleteUpgrade(to)
}

// recoverUpgrades finishes or undoes the upgrades a crash interrupted,
// before anything is adopted: from the pins, the loader says whether the
// new program took the old one's place; if so the records follow it.
func (d *Driver) recoverUpgrades() {
	ups, err := d.store.Upgrades()
	if err != nil {
		klog.ErrorS(err, "Some upgrade records cannot be read; they are kept as found")
	}
	for _, up := range ups {
		done, err := d.loader.RecoverReplace(up.From, up.To)
		if err != nil {
			klog.ErrorS(err, "Cannot finish or undo an interrupted upgrade; its record is kept", "program", clip(up.To.Program, maxLogValue))
			continue
		}
		if !done {
			klog.InfoS("Undid an upgrade a crash interrupted", "program", clip(up.To.Program, maxLogValue))
			if err := d.store.DeleteUpgrade(up.To.Key()); err != nil {
				klog.ErrorS(err, "Deleting an upgrade record")
			}
			continue
		}
		// The program ID is filled in when the records are adopted.
		if err := d.followUpgrade(up, 0); err != nil {
			klog.ErrorS(err, "Finishing an interrupted upgrade; retried at the next start", "program", clip(up.To.Program, maxLogValue))
			continue
		}
		klog.InfoS("Finished an upgrade a crash interrupted", "program", clip(up.To.Program, maxLogValue))
	}
}

// upgradeMessage is the pod event of a publish that upgraded a program.
func upgradeMessage(rec *state.Record, rep *loader.Replaced) string {
	msg := fmt.Sprintf("upgraded %s program %q on %s in place for volume %s (now id %d): maps carried over: %s",
		rec.Identity.Hook, rec.Identity.Program, attachPoint(rec.Identity), rec.VolumeID, rec.ProgramID, listOrNone(rep.Carried))
	if len(rep.Reset) > 0 {
		msg += "; maps that changed shape and start empty: " + strings.Join(rep.Reset, ", ")
	}
	return msg
}
