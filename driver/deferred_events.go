package driver

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/internal/cri"
)

// Waiters learn of a pod's new sandbox or container from the runtime's
// event stream where the runtime has one (CRI GetContainerEvents:
// containerd 1.7 and later, CRI-O): the daemon keeps one stream, shared by
// every waiter, and an event wakes the waiters of the pod it concerns.
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
// follow events. Caller holds d.waiters.mu.
func (d *Driver) startEvents() {
	pw, ok := d.opts.CRI.(PodWatcher)
	if !ok || d.waiters.events != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	es := &eventStream{cancel: cancel, done: make(chan struct{})}
	d.waiters.events = es
	go func() {
		defer close(es.done)
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
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
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
