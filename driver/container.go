package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver/events"
	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/internal/cgrouppath"
	"github.com/bpfmount/bpfmount/internal/cri"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader"
)

// A uprobe with container: NAME probes a binary inside the requesting
// pod's container NAME: attachTo's PATH is a path in that container's root
// filesystem. The container does not run yet at publish, so the volume is
// deferred like a pod's own interface (deferred.go): its waiter finds the
// container through the runtime, attaches for its main process, attaches
// again when the container restarts, and detaches when it stops.

// AttrContainer names the pod's container a uprobe's binary is in.
const AttrContainer = "container"

// ContainerFinder finds a pod's running container by name (package
// internal/cri).
type ContainerFinder interface {
	PodContainer(ctx context.Context, uid, name string) (*cri.Container, error)
}

// containerAttacher is what container waiters use of the loader.
type containerAttacher interface {
	AttachContainer(key string, pid int) (*loader.Program, error)
}

// policyContainerPrefix marks a container's uprobe target for the policy:
// it matches "container:NAME:PATH:SYMBOL", so a rule's host path patterns
// (/usr/bin/*) never grant a container's path, nor the reverse.
const policyContainerPrefix = "container:"

// parseContainer checks container: NAME.
func (vr *volumeRequest) parseContainer() error {
	name, ok := vr.attrs[AttrContainer]
	if !ok {
		return nil
	}
	lr := &vr.load
	if lr.Hook != loader.HookUprobe && lr.Hook != loader.HookUretprobe {
		return invalid("volume attribute %q applies to types uprobe and uretprobe (set type), not %q: remove it", AttrContainer, lr.Hook)
	}
	if !loader.ValidContainerName(name) {
		return invalid("volume attribute %q: %.64q is not a container name (lower-case letters, digits and '-', at most 63, as in the pod's spec)", AttrContainer, name)
	}
	if !vr.fromPod {
		return invalid("volume attribute %q names a container of the requesting pod, and a local request comes from no pod: remove it and give attachTo a host path", AttrContainer)
	}
	if !cgrouppath.ValidUID(vr.pod.UID) {
		return invalid("the pod UID %.64q (%s) is not a UUID, so the pod's containers cannot be found: %s needs the pod's UID from kubelet (set podInfoOnMount on the CSIDriver)", vr.pod.UID, keyPodUID, AttrContainer)
	}
	lr.Container = name
	lr.Pod = vr.pod.UID
	return nil
}

// policyAttachTo is the attachTo the policy matches: a container's uprobe
// target as container:NAME:PATH:SYMBOL.
func policyAttachTo(lr *loader.Request, attachTo string) string {
	if lr.Container != "" && attachTo != "" {
		return policyContainerPrefix + lr.Container + ":" + attachTo
	}
	return attachTo
}

// checkContainerRuntime refuses a container's uprobe on a driver that
// cannot find containers, at publish rather than in a status.
func (d *Driver) checkContainerRuntime(vr *volumeRequest) error {
	if _, ok := d.opts.CRI.(ContainerFinder); !ok || d.opts.CRI == nil {
		return fault.Errorf(fault.Precondition, "volume attribute %s needs the container runtime's CRI socket, and this driver has none: start it with --cri-endpoint (chart value criSocket)", AttrContainer)
	}
	return nil
}

// stepContainer is step for a container's uprobe: it asks the runtime for
// the container once and acts on the answer.
func (d *Driver) stepContainer(ctx context.Context, w *waiter) time.Duration {
	poll := d.pollInterval()
	finder, ok := d.opts.CRI.(ContainerFinder)
	att, ok2 := d.loader.(containerAttacher)
	if !ok || !ok2 {
		d.failed(w, "", "this driver cannot find or attach in containers")
		return 0
	}
	name := w.id.Container
	cctx, cancel := context.WithTimeout(ctx, criCallTimeout)
	c, err := finder.PodContainer(cctx, w.id.Pod, name)
	cancel()
	if ctx.Err() != nil {
		return 0 // stopped: unpublish releases the program
	}
	switch {
	case errors.Is(err, cri.ErrNoContainer):
		if w.netns != "" {
			// The container stopped: its process is gone, and the
			// link with it; drop the pin and wait for the restart.
			if err := d.attacher().DetachNetns(w.key); err != nil {
				klog.ErrorS(err, "Dropping the link of a container's uprobe whose container stopped", "volume", w.volID)
			}
			w.netns, w.sandbox, w.waitingSince, w.detached = "", "", time.Now(), true
			klog.InfoS("The pod's container stopped; detached, waiting for it to run again", "volume", w.volID, "pod", w.id.Pod, "container", name)
		}
		why := "waiting for container " + name + " to run"
		if w.detached {
			// Said until it runs again, not only until the next look.
			why = "container " + name + " is not running: detached; waiting for it to run again"
		}
		d.waiting(w, why)
		return d.untilWaitEnds(w, poll)
	case err != nil:
		d.waiting(w, "cannot ask the container runtime for container "+name+": "+err.Error())
		return d.fastPoll()
	}
	p, err := att.AttachContainer(w.key, c.PID)
	if err != nil {
		// The binary or symbol may be missing from this image; the
		// container may have exited meanwhile: report, and try again.
		d.failed(w, c.ID, fmt.Sprintf("cannot attach in container %s (%.24s): %v", name, c.ID, err))
		return d.fastPoll()
	}
	if w.netns != p.Netns || w.sandbox != c.ID || w.statusState() != stateAttached {
		w.netns, w.sandbox, w.failedFor, w.detached = p.Netns, c.ID, "", false
		w.setStatus(podnetStatus{State: stateAttached, Container: name, ContainerID: c.ID, PID: c.PID})
		w.writeStatus()
		metrics.DeferredAttach.WithLabelValues(hookLabel(w.id.Hook), stateAttached).Inc()
		d.opts.Events.Normal(podRef(w.pod), events.ReasonAttached, fmt.Sprintf("attached %s program %q to container %s (%.24s, process %d) for volume %s",
			w.id.Hook, w.id.Program, name, c.ID, c.PID, w.volID))
		klog.InfoS("Attached a pod's uprobe in its container", "volume", w.volID, "pod", w.id.Pod, "container", name,
			"containerID", clip(c.ID, maxLogValue), "pid", c.PID)
	}
	return poll
}

// target is what a waiter attaches to, in messages.
func (w *waiter) target() string {
	if w.id.Container != "" {
		return "container " + w.id.Container
	}
	return "the pod's interface " + w.id.Interface
}

// baseStatus is a status naming what the waiter attaches to.
func (w *waiter) baseStatus(state string) podnetStatus {
	if w.id.Container != "" {
		return podnetStatus{State: state, Container: w.id.Container}
	}
	return podnetStatus{State: state, Interface: w.id.Interface}
}
