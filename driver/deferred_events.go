package driver

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/internal/cri"
)

// Waiters learn of a pod's new sandbox or container from the runtime's
// event stream where the runtime has one (CRI GetContainerEvents:
// containerd 1.7 and later, CRI-O) and the daemon may subscribe to it
// (Options.CRIEvents): the daemon keeps one stream, shared by every
// waiter, and an event wakes the waiters of the pod it concerns.
// While the stream flows, waiters ask the runtime on their own only at
// Options.SandboxResync, a safety net; a runtime without events, or a
// stream that broke, puts them back on Options.SandboxPoll until the
// stream is open again (it is reopened with back-off).

// PodWatcher follows the runtime's events (package internal/cri): fn("")
// once the stream is open and for an event that names no pod, fn(uid) for
// one about pod uid's sandbox or containers.
type PodWatcher interface {
	WatchPods(ctx context.Context, fn func(uid string)) error
}

// CRIEventsMode says whether the daemon subscribes to the runtime's event
// stream. containerd before 2.0 serves one shared channel that every
// subscriber reads from, so a second subscriber would take events from
// kubelet's own (Evented PLEG); hence auto subscribes only where that is
// known not to happen.
type CRIEventsMode int

const (
	// CRIEventsAuto subscribes only if the runtime's CRI Version names
	// containerd 2.0 or later (cri.EventsSafe).
	CRIEventsAuto CRIEventsMode = iota
	// CRIEventsOn always subscribes.
	CRIEventsOn
	// CRIEventsOff never subscribes: waiters poll.
	CRIEventsOff
)

// ParseCRIEventsMode parses auto, on or off.
func ParseCRIEventsMode(s string) (CRIEventsMode, error) {
	switch s {
	case "auto":
		return CRIEventsAuto, nil
	case "on":
		return CRIEventsOn, nil
	case "off":
		return CRIEventsOff, nil
	}
	return 0, fmt.Errorf("%.32q: want auto, on or off", s)
}

// RuntimeVersioner tells the runtime's name and version (CRI Version), by
// which CRIEventsAuto decides.
type RuntimeVersioner interface {
	RuntimeVersion(ctx context.Context) (name, version string, err error)
}

// DefaultSandboxResync is the default of Options.SandboxResync.
const DefaultSandboxResync = time.Minute

// Back-off of the event stream's reopening: from eventsRetryMin, doubled
// up to eventsRetryMax, back to the minimum after a stream that lasted;
// a runtime without events is asked again at eventsRetryUnimplemented (it
// may have been upgraded).
const (
	eventsRetryMin           = 500 * time.Millisecond
	eventsRetryMax           = 30 * time.Second
	eventsRetryUnimplemented = 10 * time.Minute
)

// eventStream is the daemon's stream of runtime events.
type eventStream struct {
	streaming atomic.Bool // events flow: waiters poll at the resync interval
	cancel    context.CancelFunc
	done      chan struct{}
}

// startEvents starts the event stream, once, if the runtime client can
// follow events and Options.CRIEvents lets it. Caller holds d.waiters.mu.
func (d *Driver) startEvents() {
	pw, ok := d.opts.CRI.(PodWatcher)
	if !ok || d.waiters.events != nil || d.waiters.stopped || d.opts.CRIEvents == CRIEventsOff {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	es := &eventStream{cancel: cancel, done: make(chan struct{})}
	d.waiters.events = es
	go func() {
		defer close(es.done)
		if d.opts.CRIEvents == CRIEventsAuto && !d.eventsSafe(ctx) {
			return
		}
		d.followEvents(ctx, pw, es)
	}()
}

// followEvents keeps the stream open until ctx ends.
func (d *Driver) followEvents(ctx context.Context, pw PodWatcher, es *eventStream) {
	retry := eventsRetryMin
	for {
		opened := time.Time{}
		err := pw.WatchPods(ctx, func(uid string) {
			if !es.streaming.Swap(true) {
				opened = time.Now()
				klog.InfoS("Following the container runtime's events; pods' waiters poll it only as a safety net", "interval", d.resyncInterval())
			}
			// At the start: catch up with what happened while no stream
			// was open.
			d.wakeWaiters(uid)
		})
		if ctx.Err() != nil {
			return
		}
		wait := retry
		if es.streaming.Swap(false) {
			d.wakeWaiters("") // back to polling at once
			if time.Since(opened) > eventsRetryMax {
				wait, retry = eventsRetryMin, eventsRetryMin
			}
		}
		if errors.Is(err, cri.ErrNoEvents) {
			wait = eventsRetryUnimplemented
			klog.InfoS("The container runtime has no event stream; pods' waiters poll it", "interval", d.fastPoll(), "err", err)
		} else {
			klog.InfoS("The container runtime's event stream broke or did not open; pods' waiters poll it until it is open", "interval", d.fastPoll(), "retryIn", wait, "err", err)
			retry = min(2*retry, eventsRetryMax)
		}
		if !sleepCtx(ctx, wait) {
			return
		}
	}
}

// eventsSafe asks the runtime's version, until it answers or ctx ends, and
// reports whether CRIEventsAuto subscribes to its events. It logs why not.
func (d *Driver) eventsSafe(ctx context.Context) bool {
	rv, ok := d.opts.CRI.(RuntimeVersioner)
	if !ok {
		return false
	}
	retry := eventsRetryMin
	for {
		cctx, cancel := context.WithTimeout(ctx, criCallTimeout)
		name, version, err := rv.RuntimeVersion(cctx)
		cancel()
		if err == nil {
			safe, why := cri.EventsSafe(name, version)
			if !safe {
				klog.InfoS("Not following the container runtime's events, which could take them from kubelet; pods' waiters poll it (--cri-events=on forces the events)", "reason", why, "interval", d.fastPoll())
			}
			return safe
		}
		if ctx.Err() != nil {
			return false
		}
		klog.InfoS("The container runtime does not say its version; pods' waiters poll it until it does", "interval", d.fastPoll(), "retryIn", retry, "err", err)
		if !sleepCtx(ctx, retry) {
			return false
		}
		retry = min(2*retry, eventsRetryMax)
	}
}

// sleepCtx waits for d, or until ctx ends, and reports whether it waited
// the whole time.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// wakeWaiters wakes the waiters of pod uid, or every waiter for "".
func (d *Driver) wakeWaiters(uid string) {
	d.waiters.mu.Lock()
	defer d.waiters.mu.Unlock()
	for _, w := range d.waiters.byVol {
		if uid == "" || w.id.Pod == uid {
			select {
			case w.wake <- struct{}{}:
			default: // woken already
			}
		}
	}
}

// streaming reports whether the runtime's events flow.
func (d *Driver) streaming() bool {
	d.waiters.mu.Lock()
	es := d.waiters.events
	d.waiters.mu.Unlock()
	return es != nil && es.streaming.Load()
}

func (d *Driver) resyncInterval() time.Duration {
	if d.opts.SandboxResync > 0 {
		return d.opts.SandboxResync
	}
	return DefaultSandboxResync
}
