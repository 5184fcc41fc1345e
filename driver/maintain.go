package driver

import (
	"context"
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
	ents, err := os.ReadDir(d.store.MountsDir())
	if err != nil {
		klog.ErrorS(err, "Garbage collection: reading staging directories")
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
		if err == nil && rec == nil {
			if err := mapfs.Withdraw(filepath.Join(d.store.MountsDir(), vol), ""); err != nil {
				klog.ErrorS(err, "Garbage collection: removing a staging mount", "volume", vol)
			} else {
				staging = append(staging, vol)
			}
		}
		unlock()
	}
	pins, err = d.loader.Prune()
	if err != nil {
		klog.ErrorS(err, "Garbage collection: removing pins")
	}
	if len(staging)+len(pins) > 0 {
		klog.InfoS("Collected garbage", "stagingMounts", staging, "pins", pins)
	}
	return staging, pins
}
