package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver/events"
	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/cri"
	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/loader"
)

// A deferred volume is published with its program loaded and its maps
// mounted, and attached when its runtime target appears: for a pod's own
// interface, the network namespace of the pod's sandbox, which kubelet
// creates after it mounts the pod's volumes. A waiter per volume asks the
// container runtime (CRI) for the pod's current sandbox (when the
// runtime's events say the pod changed, deferred_events.go, else at
// intervals), attaches in its namespace, attaches again when the sandbox
// is replaced, and says where
// it stands in the volume's status map (status.go), in pod events and in
// bpfmount_deferred_attach_total. Unpublish stops the waiter before it
// releases the program; a restart starts the waiters again from the
// records.

// SandboxFinder finds a pod's current sandbox (package internal/cri).
type SandboxFinder interface {
	PodSandbox(ctx context.Context, uid string) (*cri.Sandbox, error)
}

// netnsAttacher is what waiters use of the loader.
type netnsAttacher interface {
	AttachNetns(key, netns string) (*loader.Program, error)
	DetachNetns(key string) error
}

// Defaults of Options.SandboxPoll and Options.SandboxWait.
const (
	DefaultSandboxPoll = 2 * time.Second
	DefaultSandboxWait = 2 * time.Minute
	// criCallTimeout bounds one call to the runtime.
	criCallTimeout = 5 * time.Second
)

// waiters holds the running waiters by volume ID, and the runtime's event
// stream that wakes them (deferred_events.go). Its zero value is ready.
type waiters struct {
	mu     sync.Mutex
	byVol  map[string]*waiter
	events *eventStream
	// stopped: StopWaiters ran; no waiter or stream starts any more (a
	// publish still in flight at shutdown would start one nothing stops).
	stopped bool
}

// waiter follows one deferred volume's pod.
type waiter struct {
	volID, key string
	id         loader.Identity
	pod        state.Pod
	statusMap  *ebpf.Map // belongs to the loader; valid until the volume releases it
	cancel     context.CancelFunc
	done       chan struct{}
	wake       chan struct{} // an event about the pod: ask the runtime now

	mu     sync.Mutex
	status podnetStatus
	// sandbox and netns are where the program is attached ("" for
	// nowhere); failedFor is the failure last reported, so a failure
	// raises one event, not one per poll.
	sandbox, netns, failedFor string
	waitingSince              time.Time
	// detached: a container's waiter detached when its container
	// stopped, and waits for it to run again.
	detached bool
}

// startDeferred starts the waiter of a deferred volume. At publish
// (first) it makes the first attempt before returning, so a pod whose
// sandbox is there already is attached when the publish returns; at a
// restart the waiters start without delaying it.
func (d *Driver) startDeferred(rec *state.Record, prog *loader.Program, first bool) {
	if !rec.Identity.Deferred() || d.opts.CRI == nil {
		return
	}
	if _, ok := d.loader.(netnsAttacher); !ok {
		klog.ErrorS(nil, "The loader cannot attach in a pod's namespace; the volume stays unattached", "volume", rec.VolumeID)
		return
	}
	now := time.Now()
	w := &waiter{volID: rec.VolumeID, key: rec.Key, id: rec.Identity, pod: rec.Pod, statusMap: prog.Maps[loader.StatusMap],
		done: make(chan struct{}), wake: make(chan struct{}, 1), waitingSince: now}
	switch {
	case prog.Attached && prog.Netns != "" && rec.Identity.Container != "":
		// Adopted after a restart: the runtime says at the first poll
		// whether that is still the container's process.
		w.netns = prog.Netns
		w.setStatus(w.baseStatus(stateAttached))
	case prog.Attached && prog.Netns != "":
		// Adopted after a restart: the runtime says at the first poll
		// whether that is still the pod's sandbox.
		w.netns = prog.Netns
		w.setStatus(podnetStatus{State: stateAttached, Interface: rec.Identity.Interface, Netns: prog.Netns})
	case rec.Identity.Container != "":
		s := w.baseStatus(stateWaiting)
		s.Reason = "waiting for container " + rec.Identity.Container + " to run"
		w.setStatus(s)
	default:
		w.setStatus(podnetStatus{State: stateWaiting, Interface: rec.Identity.Interface, Reason: "waiting for the pod's sandbox"})
	}
	w.writeStatus()
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	d.stopDeferred(rec.VolumeID) // never two waiters for one volume
	d.waiters.mu.Lock()
	if d.waiters.stopped {
		d.waiters.mu.Unlock()
		cancel()
		return
	}
	if d.waiters.byVol == nil {
		d.waiters.byVol = map[string]*waiter{}
	}
	d.waiters.byVol[rec.VolumeID] = w
	d.startEvents()
	d.waiters.mu.Unlock()
	next := d.pollInterval()
	if first {
		next = d.step(ctx, w)
	}
	go func() {
		defer close(w.done)
		for next > 0 {
			t := time.NewTimer(next)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			case <-w.wake:
				t.Stop()
			}
			next = d.step(ctx, w)
		}
	}()
}

// stopDeferred stops a volume's waiter, if it has one, and waits until it
// has stopped: after it returns the waiter touches the program no more.
func (d *Driver) stopDeferred(volID string) {
	d.waiters.mu.Lock()
	w := d.waiters.byVol[volID]
	delete(d.waiters.byVol, volID)
	d.waiters.mu.Unlock()
	if w != nil {
		w.cancel()
		<-w.done
	}
}

// StopWaiters stops every waiter and the runtime's event stream (at
// shutdown). Attachments stay.
func (d *Driver) StopWaiters() {
	d.waiters.mu.Lock()
	all, es := d.waiters.byVol, d.waiters.events
	d.waiters.byVol, d.waiters.events = nil, nil
	d.waiters.stopped = true
	d.waiters.mu.Unlock()
	if es != nil {
		es.cancel()
		<-es.done
	}
	for _, w := range all {
		w.cancel()
		<-w.done
	}
}

// deferredStatus returns a volume's current status, and whether it has a
// waiter.
func (d *Driver) deferredStatus(volID string) (podnetStatus, bool) {
	d.waiters.mu.Lock()
	w := d.waiters.byVol[volID]
	d.waiters.mu.Unlock()
	if w == nil {
		return podnetStatus{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status, true
}

// pollInterval is how long a waiter that waits for its pod's sandbox (or
// container), or watches the one it is attached in, lets pass before it
// asks the runtime again unless an event wakes it: the safety net's
// interval while the runtime's events flow, else the poll's.
func (d *Driver) pollInterval() time.Duration {
	if d.streaming() {
		return d.resyncInterval()
	}
	return d.fastPoll()
}

// fastPoll is how soon a waiter tries again when no event would tell it
// to: the runtime did not answer, or the attach failed (the pod's
// interface may not be there yet).
func (d *Driver) fastPoll() time.Duration {
	if d.opts.SandboxPoll > 0 {
		return d.opts.SandboxPoll
	}
	return DefaultSandboxPoll
}

// untilWaitEnds shortens next so that a waiter reports a failure when
// Options.SandboxWait has passed, not up to a safety-net interval later.
func (d *Driver) untilWaitEnds(w *waiter, next time.Duration) time.Duration {
	if rem := time.Until(w.waitingSince.Add(d.sandboxWait())); rem > 0 && rem < next {
		return rem + 10*time.Millisecond
	}
	return next
}

func (d *Driver) sandboxWait() time.Duration {
	if d.opts.SandboxWait > 0 {
		return d.opts.SandboxWait
	}
	return DefaultSandboxWait
}

// step asks the runtime for the pod's sandbox once and acts on the
// answer. It returns when to ask again; 0 means never (a hostNetwork pod,
// whose spec cannot change).
func (d *Driver) step(ctx context.Context, w *waiter) time.Duration {
	if w.id.Container != "" {
		return d.stepContainer(ctx, w)
	}
	poll := d.pollInterval()
	cctx, cancel := context.WithTimeout(ctx, criCallTimeout)
	sb, err := d.opts.CRI.PodSandbox(cctx, w.id.Pod)
	cancel()
	if ctx.Err() != nil {
		return 0 // stopped: unpublish releases the program
	}
	switch {
	case errors.Is(err, cri.ErrNoSandbox):
		if w.netns != "" {
			// The sandbox went (its namespace with it, and the kernel
			// detached the link): drop the link's pin, wait for the
			// replacement kubelet starts.
			if err := d.attacher().DetachNetns(w.key); err != nil {
				klog.ErrorS(err, "Dropping the link of a pod's attachment whose sandbox is gone", "volume", w.volID)
			}
			w.netns, w.sandbox, w.waitingSince = "", "", time.Now()
			klog.InfoS("The pod's sandbox is gone; waiting for its replacement", "volume", w.volID, "pod", w.id.Pod)
		}
		d.waiting(w, "waiting for the pod's sandbox")
		return d.untilWaitEnds(w, poll)
	case err != nil:
		d.waiting(w, "cannot ask the container runtime for the pod's sandbox: "+err.Error())
		return d.fastPoll()
	case sb.HostNetwork:
		d.failed(w, sb.ID, hostNetworkError(w.id.Interface).Error())
		return 0
	}
	p, err := d.attacher().AttachNetns(w.key, sb.Netns)
	if err != nil {
		// The interface may not be there yet (the network plugin is
		// still at work), or the namespace went meanwhile: try again.
		d.failed(w, sb.ID, fmt.Sprintf("cannot attach in sandbox %s: %v", sb.ID, err))
		return d.fastPoll()
	}
	failpoint.Hit("deferred.attached")
	if w.netns != p.Netns || w.sandbox != sb.ID || w.statusState() != stateAttached {
		w.netns, w.sandbox, w.failedFor = p.Netns, sb.ID, ""
		w.setStatus(podnetStatus{State: stateAttached, Interface: w.id.Interface, Netns: p.Netns, Sandbox: sb.ID})
		w.writeStatus()
		metrics.DeferredAttach.WithLabelValues(hookLabel(w.id.Hook), stateAttached).Inc()
		d.opts.Events.Normal(podRef(w.pod), events.ReasonAttached, fmt.Sprintf("attached %s program %q to the pod's interface %s in sandbox %.72s for volume %s",
			w.id.Hook, w.id.Program, w.id.Interface, sb.ID, w.volID))
		klog.InfoS("Attached a pod's program in its sandbox", "volume", w.volID, "pod", w.id.Pod, "interface", w.id.Interface,
			"sandbox", clip(sb.ID, maxLogValue), "netns", clip(p.Netns, maxLogValue))
	}
	return poll
}

// waiting reports that the waiter waits; past Options.SandboxWait without
// an attachment it reports a failure instead (and keeps waiting).
func (d *Driver) waiting(w *waiter, why string) {
	if time.Since(w.waitingSince) > d.sandboxWait() {
		d.failed(w, "", fmt.Sprintf("not attached after %s: %s", d.sandboxWait().Round(time.Second), why))
		return
	}
	if w.statusState() == stateWaiting && w.status.Reason == clip(why, maxStatusReason) {
		return
	}
	s := w.baseStatus(stateWaiting)
	s.Reason = clip(why, maxStatusReason)
	w.setStatus(s)
	w.writeStatus()
}

// failed reports a failure once per distinct reason: in the status, as a
// pod event and in the metric.
func (d *Driver) failed(w *waiter, sandbox, why string) {
	why = clip(why, maxStatusReason)
	if w.failedFor == why {
		return
	}
	w.failedFor = why
	s := w.baseStatus(stateFailed)
	s.Reason = why
	if w.id.Container != "" {
		s.ContainerID = sandbox
	} else {
		s.Sandbox = sandbox
	}
	w.setStatus(s)
	w.writeStatus()
	metrics.DeferredAttach.WithLabelValues(hookLabel(w.id.Hook), stateFailed).Inc()
	d.opts.Events.Warning(podRef(w.pod), events.ReasonAttachFailed, fmt.Sprintf("bpfmount cannot attach the program of volume %s to %s: %s", w.volID, w.target(), why))
	klog.InfoS("Cannot attach a pod's program", "volume", w.volID, "pod", w.id.Pod, "target", w.target(), "reason", why)
}

// attacher is the loader's deferred attach; every programLoader the
// driver is built with has it (the fakes of the unit tests too).
func (d *Driver) attacher() netnsAttacher { return d.loader.(netnsAttacher) }

func (w *waiter) setStatus(s podnetStatus) {
	s.Since = time.Now().UTC()
	w.mu.Lock()
	w.status = s
	w.mu.Unlock()
}

func (w *waiter) statusState() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status.State
}

func (w *waiter) writeStatus() {
	w.mu.Lock()
	s := w.status
	w.mu.Unlock()
	if err := writeStatus(w.statusMap, s); err != nil {
		klog.ErrorS(err, "Writing the status of a pod's attachment", "volume", w.volID)
	}
}

// statusMapOf adds a deferred program's status map to the maps a volume
// exposes.
func statusMapOf(prog *loader.Program, selected map[string]*ebpf.Map) {
	if m, ok := prog.Maps[loader.StatusMap]; ok && prog.Identity.Deferred() {
		selected[loader.StatusMap] = m
	}
}
