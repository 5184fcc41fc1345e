package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/fault"
)

// A program lives as long as something holds it in the loader. Volumes
// hold it while they are published; with keepAttached the driver holds it
// on after the last volume went, until a deadline recorded in the state
// directory (a linger record), so a pod that is replaced (a DaemonSet
// rollout) finds its program still attached, maps and counters and all.

// lifetime is what a volume asks about its program's lifetime.
type lifetime struct {
	keep    time.Duration // keepAttached
	keepSet bool          // keepAttached was given
	name    string        // name: the load's node-wide name (names.go)
	from    string        // from: the name whose maps a map-only volume mounts (from.go)
}

// parseLifetime checks the lifetime attributes; the node's caps are checked
// at publish (checkLifetime), against the policy in force.
func (vr *volumeRequest) parseLifetime() error {
	if _, ok := vr.attrs[AttrFrom]; ok {
		return vr.parseFrom()
	}
	if v, ok := vr.attrs[AttrKeepAttached]; ok {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return invalid("volume attribute %q: %q is not a duration of 0 or more, such as 30s or 5m", AttrKeepAttached, v)
		}
		vr.life.keep, vr.life.keepSet = d, true
	}
	if n, ok := vr.attrs[AttrName]; ok {
		if !validName(n) {
			return invalid("volume attribute %q: %q is not a DNS label: use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit", AttrName, n)
		}
		vr.life.name = n
	}
	return nil
}

// checkPodScopedLifetime refuses name and keepAttached on a program that
// lives in the requesting pod (its own interface, its container's uprobe):
// the target goes with the pod, and the identity holds the pod's UID, so
// no other pod could share the name or take the program over.
func (vr *volumeRequest) checkPodScopedLifetime() error {
	if vr.load.Pod == "" {
		return nil
	}
	for _, k := range []string{AttrKeepAttached, AttrName} {
		if _, ok := vr.attrs[k]; ok {
			return invalid("volume attribute %q cannot be used on the pod's own interface or container: the program goes with the pod; remove it, or attach to a node target", k)
		}
	}
	return nil
}

// checkLifetime returns how long the volume's program is to stay attached
// after the volume goes: the request's keepAttached within the node's cap,
// or the node's default.
func (d *Driver) checkLifetime(vr *volumeRequest) (time.Duration, error) {
	k := d.opts.Policy.Current().KeepAttached()
	if !vr.life.keepSet {
		return k.Default, nil
	}
	if vr.life.keep > k.Max {
		return 0, invalid("volume attribute %q: %s is over this node's cap of %s (keepAttached.max in the node policy): ask for %s or less",
			AttrKeepAttached, vr.life.keep, k.Max, k.Max)
	}
	return vr.life.keep, nil
}

// lingerOwner is the loader owner that holds a lingering program. A volume
// ID never holds ':', so it cannot collide with a volume's.
func lingerOwner(key string) string { return "linger:" + key }

// linger keeps rec's program attached for rec.KeepAttached after the
// volume goes (capped by the policy in force). It runs before the volume
// releases its program: the deadline is recorded first, then the driver's
// hold is added, so a crash anywhere leaves either the old state or a
// record that Restore adopts. A later deadline already recorded is kept.
func (d *Driver) linger(rec *state.Record) error {
	keep := min(rec.KeepAttached, d.opts.Policy.Current().KeepAttached().Max)
	if keep <= 0 || rec.Broken != "" || rec.Identity.Deferred() { // a pod's own target went with it
		return nil
	}
	d.lingerMu.Lock()
	defer d.lingerMu.Unlock()
	if d.store.heldByOther(rec.Key, rec.VolumeID) {
		// Another volume holds the program (a rollout's new pod published
		// before the old one's unpublish): it lingers when that one goes.
		// A volume recorded after this check takes over under lingerMu.
		return nil
	}
	deadline := time.Now().Add(keep).UTC()
	old, err := d.store.GetLinger(rec.Key)
	if err != nil {
		return fmt.Errorf("reading the linger record of volume %q's program: %w", rec.VolumeID, err)
	}
	if old != nil && old.Deadline.After(deadline) {
		deadline = old.Deadline
	}
	l := &state.Linger{Key: rec.Key, Identity: rec.Identity, ProgramID: rec.ProgramID, Deadline: deadline, Name: rec.Attributes[AttrName]}
	if err := d.store.PutLinger(l); err != nil {
		return fmt.Errorf("recording that volume %q's program stays attached: %w", rec.VolumeID, err)
	}
	failpoint.Hit("unpublish.linger")
	if !d.loader.Hold(rec.Key, lingerOwner(rec.Key)) {
		// Nothing to keep (the program is gone): no record either.
		return d.store.DeleteLinger(rec.Key)
	}
	klog.InfoS("Program stays attached after its volume", "volume", rec.VolumeID, "program", clip(rec.Identity.Program, maxLogValue),
		"id", rec.ProgramID, "until", deadline)
	select {
	case d.lingerWake <- struct{}{}:
	default:
	}
	return nil
}

// takeOver ends a lingering program's deadline once a volume holds it
// again. It is called after the volume's record is written.
func (d *Driver) takeOver(rec *state.Record) {
	d.lingerMu.Lock()
	defer d.lingerMu.Unlock()
	l, err := d.store.GetLinger(rec.Key)
	if err != nil || l == nil {
		return // an unreadable record expires at its deadline
	}
	if err := d.store.DeleteLinger(rec.Key); err != nil {
		klog.ErrorS(err, "Deleting a linger record; the program stays attached at least until its deadline", "volume", rec.VolumeID)
		return
	}
	if err := d.loader.Release(rec.Key, lingerOwner(rec.Key)); err != nil {
		klog.ErrorS(err, "Dropping the hold of a lingering program", "volume", rec.VolumeID)
	}
	klog.InfoS("Volume took over a lingering program", "volume", rec.VolumeID, "id", rec.ProgramID)
}

// expireLingers releases the programs whose keepAttached deadline passed
// by now, and returns their keys. A program a volume holds again stays
// attached; the driver's hold on it goes.
func (d *Driver) expireLingers(now time.Time) []string {
	d.lingerMu.Lock()
	defer d.lingerMu.Unlock()
	ls, err := d.store.Lingers()
	if err != nil {
		klog.ErrorS(err, "Some linger records cannot be read; their programs stay attached until they are fixed or removed")
	}
	var expired []string
	for _, l := range ls {
		if l.Deadline.After(now) {
			continue
		}
		failpoint.Hit("linger.expire")
		// Hold is idempotent and says whether the loader holds the
		// program at all: one it could not adopt is not released, which
		// would remove the pins a broken volume's unpublish must find.
		if d.loader.Hold(l.Key, lingerOwner(l.Key)) {
			if err := d.loader.Release(l.Key, lingerOwner(l.Key)); err != nil {
				klog.ErrorS(err, "Detaching a program whose keepAttached ended; retried at the next collection", "id", l.ProgramID)
				continue
			}
		}
		failpoint.Hit("linger.released")
		if err := d.store.DeleteLinger(l.Key); err != nil {
			klog.ErrorS(err, "Deleting a linger record", "id", l.ProgramID)
			continue
		}
		klog.InfoS("Program's keepAttached ended", "program", clip(l.Identity.Program, maxLogValue), "id", l.ProgramID,
			"target", clip(targetOf(l.Identity), maxLogValue))
		expired = append(expired, l.Key)
	}
	return expired
}

// nextDeadline is the earliest linger deadline; zero when none.
func (d *Driver) nextDeadline() time.Time {
	ls, _ := d.store.Lingers()
	var next time.Time
	for _, l := range ls {
		if next.IsZero() || l.Deadline.Before(next) {
			next = l.Deadline
		}
	}
	return next
}

// expireAtDeadlines detaches lingering programs at their deadlines until
// ctx is done, without waiting for the next garbage collection.
func (d *Driver) expireAtDeadlines(ctx context.Context) {
	var floor time.Duration // after a round, a release that failed is retried no sooner
	for {
		var fire <-chan time.Time
		var t *time.Timer
		if next := d.nextDeadline(); !next.IsZero() {
			t = time.NewTimer(max(time.Until(next), floor))
			fire = t.C
		}
		floor = 0
		select {
		case <-ctx.Done():
		case <-d.lingerWake:
		case <-fire:
			d.expireLingers(time.Now())
			floor = time.Second
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// restoreLingers re-adopts the programs that were lingering when the
// driver stopped; their deadlines go on as recorded.
func (d *Driver) restoreLingers(rep *RestoreReport) {
	ls, err := d.store.Lingers()
	if err != nil {
		n := countErrors(err)
		rep.Unreadable += n
		metrics.RestoreErrors.Add(float64(n))
		klog.ErrorS(err, "Some linger records could not be read; they and their pins are kept as found")
	}
	for _, l := range ls {
		_, err := d.loader.Adopt(l.Identity, lingerOwner(l.Key))
		switch {
		case err == nil:
			rep.Lingering = append(rep.Lingering, l.Key)
		case fault.Of(err) == fault.NotFound:
			klog.InfoS("Lingering program vanished; dropping its record", "id", l.ProgramID, "err", err)
			if err := d.store.DeleteLinger(l.Key); err != nil {
				klog.ErrorS(err, "Deleting a linger record")
			}
		default:
			metrics.RestoreErrors.Inc()
			klog.ErrorS(errors.New(clip(err.Error(), maxLogError)), "Cannot re-adopt a lingering program; its pins are kept", "id", l.ProgramID)
		}
	}
}

// lingerKeys are the keys of the recorded lingering programs, whose pins
// garbage collection keeps.
func (d *Driver) lingerKeys() ([]string, error) {
	ls, err := d.store.Lingers()
	keys := make([]string, 0, len(ls))
	for _, l := range ls {
		keys = append(keys, l.Key)
	}
	return keys, err
}
