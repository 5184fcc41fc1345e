package driver

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/internal/cri"
	"github.com/bpfmount/bpfmount/internal/cri/critest"
)

// newEventsDriver is a driver on the fake loader whose runtime is a fake
// CRI server (critest) reached through the real client, serving events or
// not, with the given poll and safety-net intervals, under podnetPolicy.
func newEventsDriver(t *testing.T, poll, resync time.Duration, events bool) (*podnetFakes, *critest.Runtime) {
	t.Helper()
	f, rt, _ := newEventsDriverWith(t, podnetPolicy, poll, resync, events)
	return f, rt
}

// newEventsDriverWith is newEventsDriver under pol, whose fake loader
// attaches in containers too.
func newEventsDriverWith(t *testing.T, pol string, poll, resync time.Duration, events bool) (*podnetFakes, *critest.Runtime, *containerLoader) {
	t.Helper()
	return newEventsDriverOpts(t, pol, poll, resync, func(rt *critest.Runtime, _ *Options) { rt.SetEvents(events) })
}

// newEventsDriverOpts is newEventsDriverWith with the runtime and the
// driver's options set up by setup.
func newEventsDriverOpts(t *testing.T, pol string, poll, resync time.Duration, setup func(*critest.Runtime, *Options)) (*podnetFakes, *critest.Runtime, *containerLoader) {
	t.Helper()
	rt, ep := critest.Start(t)
	c, err := cri.Dial(ep)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f := newPodnetFakes()
	cl := &containerLoader{netnsLoader: f.nl}
	opts := Options{NodeID: "node-1", StateDir: "/state", BPFFSRoot: "/sys/fs/bpf/bpfmount", Policy: policy.Static(mustPolicy(t, pol)),
		Events: f.events, CRI: c, SandboxPoll: poll, SandboxResync: resync, SandboxWait: time.Hour}
	setup(rt, &opts)
	d, err := newDriver(opts, cl, f.store, f.mounts)
	if err != nil {
		t.Fatal(err)
	}
	f.d = d
	t.Cleanup(d.StopWaiters)
	return f, rt, cl
}

// publishWaiting publishes vol-1 for podUID, whose sandbox is not there
// yet, and returns its key.
func (f *podnetFakes) publishWaiting(t *testing.T) string {
	t.Helper()
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, podnetAttrs("pod"))); err != nil {
		t.Fatal(err)
	}
	if s := f.status(t, "vol-1"); s.State != stateWaiting {
		t.Fatalf("before the sandbox: %+v", s)
	}
	return f.store.records["vol-1"].Key
}

// waitStreaming waits until the driver follows the runtime's events and
// the runtime has opened streams streams over its life, one open now.
func waitStreaming(t *testing.T, f *podnetFakes, rt *critest.Runtime, streams int) {
	t.Helper()
	eventually(t, func() string {
		open, opened := rt.Streams()
		return fmt.Sprintf("streams open %d, opened %d, driver streaming %v", open, opened, f.d.streaming())
	}, func() bool {
		open, opened := rt.Streams()
		return open == 1 && opened == streams && f.d.streaming()
	})
}

// The runtime's event about the pod's new sandbox wakes its waiter: with
// a poll and a safety net of a minute, only the event explains an attach
// within eventually's few seconds, in the first sandbox and in its
// replacement. One stream serves the daemon, and an event about another
// pod wakes no waiter of this one.
func TestEventWakesWaiter(t *testing.T) {
	f, rt := newEventsDriver(t, time.Minute, time.Minute, true)
	key := f.publishWaiting(t)
	waitStreaming(t, f, rt, 1)

	rt.RunSandbox(podUID, "sb-1", "/var/run/netns/cni-1")
	eventually(t, func() string { return fmt.Sprint(f.status(t, "vol-1")) }, func() bool {
		s := f.status(t, "vol-1")
		return s.State == stateAttached && s.Sandbox == "sb-1" && f.nl.at(key) == "/var/run/netns/cni-1"
	})
	rt.StopSandbox("sb-1")
	rt.RunSandbox(podUID, "sb-2", "/var/run/netns/cni-2")
	eventually(t, func() string { return fmt.Sprint(f.status(t, "vol-1")) }, func() bool {
		return f.status(t, "vol-1").Sandbox == "sb-2" && f.nl.at(key) == "/var/run/netns/cni-2"
	})

	time.Sleep(50 * time.Millisecond) // the stop's event may still have its waiter ask
	calls := rt.Calls()
	rt.RunSandbox("0b4e6f2a-1111-2222-3333-444455556666", "other", "/var/run/netns/cni-other")
	time.Sleep(50 * time.Millisecond)
	if n := rt.Calls(); n != calls {
		t.Errorf("another pod's sandbox made the waiter ask the runtime %d times", n-calls)
	}
	if open, opened := rt.Streams(); open != 1 || opened != 1 {
		t.Errorf("%d event streams open, %d opened; want one for the daemon", open, opened)
	}
	f.wantUnpublishStopsWaiter(t, rt.Calls)
}

// A runtime without events (Unimplemented) leaves the waiters polling at
// SandboxPoll: with an hour's safety net, the attach within a few seconds
// is the poll's.
func TestEventsUnimplementedFallsBackToPolling(t *testing.T) {
	f, rt := newEventsDriver(t, 20*time.Millisecond, time.Hour, false)
	key := f.publishWaiting(t)
	rt.RunSandbox(podUID, "sb-1", "/var/run/netns/cni-1")
	eventually(t, func() string { return fmt.Sprint(f.status(t, "vol-1")) }, func() bool {
		return f.status(t, "vol-1").State == stateAttached && f.nl.at(key) == "/var/run/netns/cni-1"
	})
	if open, _ := rt.Streams(); open != 0 || f.d.streaming() {
		t.Errorf("streams open %d, driver streaming %v: want polling", open, f.d.streaming())
	}
}

// A stream that breaks (the runtime restarts) is opened again after a
// back-off, and its events wake the waiters again.
func TestEventStreamReconnects(t *testing.T) {
	f, rt := newEventsDriver(t, time.Minute, time.Minute, true)
	key := f.publishWaiting(t)
	waitStreaming(t, f, rt, 1)
	rt.BreakStreams()
	waitStreaming(t, f, rt, 2)
	rt.RunSandbox(podUID, "sb-1", "/var/run/netns/cni-1")
	eventually(t, func() string { return fmt.Sprint(f.status(t, "vol-1")) }, func() bool {
		return f.status(t, "vol-1").State == stateAttached && f.nl.at(key) == "/var/run/netns/cni-1"
	})
}

// While events flow, a waiter asks the runtime on its own only at the
// safety net's interval; without them, at the poll's; a wait that ends
// before either is reported when it ends.
func TestWaiterIntervals(t *testing.T) {
	f, rt := newEventsDriver(t, 2*time.Second, 3*time.Minute, true)
	if got := f.d.pollInterval(); got != 2*time.Second {
		t.Errorf("before the stream: interval %v, want the poll's", got)
	}
	f.publishWaiting(t)
	waitStreaming(t, f, rt, 1)
	if got := f.d.pollInterval(); got != 3*time.Minute {
		t.Errorf("with events: interval %v, want the safety net's", got)
	}
	if got := f.d.fastPoll(); got != 2*time.Second {
		t.Errorf("after a failure: interval %v, want the poll's", got)
	}
	w := &waiter{waitingSince: time.Now().Add(-time.Hour + time.Second)}
	if got := f.d.untilWaitEnds(w, 3*time.Minute); got > 2*time.Second {
		t.Errorf("a wait that ends in a second: next in %v", got)
	}
}

// A container's uprobe waiter is woken by the same stream: the event of
// its container's start attaches it, that of its exit detaches it, that
// of its restart attaches it again, each within eventually's seconds with
// a poll and a safety net of a minute.
func TestEventWakesContainerWaiter(t *testing.T) {
	f, rt, cl := newEventsDriverWith(t, containerPolicy, time.Minute, time.Minute, true)
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, containerAttrs("uprobe", "/usr/bin/app:main"))); err != nil {
		t.Fatal(err)
	}
	key := f.store.records["vol-1"].Key
	waitStreaming(t, f, rt, 1)
	status := func() string { return fmt.Sprint(f.status(t, "vol-1")) }
	attachedTo := func(id string, pid int) func() bool {
		return func() bool {
			s := f.status(t, "vol-1")
			return s.State == stateAttached && s.ContainerID == id && cl.at(key) == fmt.Sprintf("pid:%d", pid)
		}
	}
	rt.RunSandbox(podUID, "sb-1", "/var/run/netns/cni-1")
	rt.RunContainer(podUID, "sb-1", "app", "c-1", 100)
	eventually(t, status, attachedTo("c-1", 100))
	rt.ExitContainer("c-1")
	detached := func() bool {
		s := f.status(t, "vol-1")
		return s.State == stateWaiting && strings.Contains(s.Reason, "detached") && cl.at(key) == ""
	}
	eventually(t, status, detached)
	// Looking again (woken twice: the first look's status is written
	// when the second starts) still says it was detached.
	for range 2 {
		calls := rt.Calls()
		f.d.wakeWaiters(podUID)
		eventually(t, status, func() bool { return rt.Calls() > calls })
	}
	time.Sleep(10 * time.Millisecond)
	if !detached() {
		t.Errorf("after another look: %s, want still detached", status())
	}
	rt.RunContainer(podUID, "sb-1", "app", "c-2", 200)
	eventually(t, status, attachedTo("c-2", 200))
}

// --cri-events: auto subscribes only to containerd 2.0 or later, whose
// stream serves several subscribers (containerd 1.7's splits the events
// between kubelet and bpfmount); on always, off never. Without a stream
// the waiter's poll attaches: with an hour's safety net, an attach within
// a few seconds is the poll's.
func TestCRIEventsMode(t *testing.T) {
	for _, tc := range []struct {
		mode          CRIEventsMode
		name, version string
		stream        bool
	}{
		{CRIEventsAuto, "containerd", "1.7.24", false},
		{CRIEventsAuto, "containerd", "v2.0.1", true},
		{CRIEventsAuto, "containerd", "2.1.0-rc.1", true},
		{CRIEventsAuto, "cri-o", "1.31.0", false},
		{CRIEventsAuto, "containerd", "unknown", false},
		{CRIEventsOn, "containerd", "1.7.24", true},
		{CRIEventsOff, "containerd", "v2.0.1", false},
	} {
		t.Run(fmt.Sprintf("%d-%s-%s", tc.mode, tc.name, tc.version), func(t *testing.T) {
			f, rt, _ := newEventsDriverOpts(t, podnetPolicy, 20*time.Millisecond, time.Hour, func(rt *critest.Runtime, o *Options) {
				rt.SetVersion(tc.name, tc.version)
				o.CRIEvents = tc.mode
			})
			key := f.publishWaiting(t)
			if tc.stream {
				waitStreaming(t, f, rt, 1)
			}
			rt.RunSandbox(podUID, "sb-1", "/var/run/netns/cni-1")
			eventually(t, func() string { return fmt.Sprint(f.status(t, "vol-1")) }, func() bool {
				return f.status(t, "vol-1").State == stateAttached && f.nl.at(key) == "/var/run/netns/cni-1"
			})
			if open, opened := rt.Streams(); !tc.stream && (opened != 0 || f.d.streaming()) {
				t.Errorf("streams open %d, opened %d, driver streaming %v: want none", open, opened, f.d.streaming())
			}
		})
	}
	if _, err := ParseCRIEventsMode("sometimes"); err == nil {
		t.Error("ParseCRIEventsMode accepted sometimes")
	}
	for s, want := range map[string]CRIEventsMode{"auto": CRIEventsAuto, "on": CRIEventsOn, "off": CRIEventsOff} {
		if m, err := ParseCRIEventsMode(s); err != nil || m != want {
			t.Errorf("ParseCRIEventsMode(%q) = %v, %v", s, m, err)
		}
	}
}

// After StopWaiters (shutdown) a publish still in flight starts neither a
// waiter nor an event stream, which nothing would stop.
func TestNoWaiterAfterStopWaiters(t *testing.T) {
	f, rt := newEventsDriver(t, time.Minute, time.Minute, true)
	f.d.StopWaiters()
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, podnetAttrs("pod"))); err != nil {
		t.Fatal(err)
	}
	f.d.waiters.mu.Lock()
	n, es := len(f.d.waiters.byVol), f.d.waiters.events
	f.d.waiters.mu.Unlock()
	if n != 0 || es != nil {
		t.Fatalf("after StopWaiters: %d waiters, event stream %v", n, es != nil)
	}
	time.Sleep(300 * time.Millisecond)
	if _, opened := rt.Streams(); opened != 0 {
		t.Errorf("after StopWaiters %d event streams were opened", opened)
	}
}

// A runtime that ends the event stream with OK at once (CRI-O with
// enable_pod_events = false) is a runtime without events: the waiters
// poll, and the stream is asked for again only rarely, not with the
// back-off of a broken stream (half a second, then one).
func TestEventsEndedAtOnceFallsBackToPolling(t *testing.T) {
	f, rt, _ := newEventsDriverOpts(t, podnetPolicy, 20*time.Millisecond, time.Hour, func(rt *critest.Runtime, o *Options) {
		rt.EndEventsAtOnce(true)
		o.CRIEvents = CRIEventsOn
	})
	key := f.publishWaiting(t)
	rt.RunSandbox(podUID, "sb-1", "/var/run/netns/cni-1")
	eventually(t, func() string { return fmt.Sprint(f.status(t, "vol-1")) }, func() bool {
		return f.status(t, "vol-1").State == stateAttached && f.nl.at(key) == "/var/run/netns/cni-1"
	})
	time.Sleep(1600 * time.Millisecond)
	if _, opened := rt.Streams(); opened != 1 || f.d.streaming() {
		t.Errorf("event stream asked for %d times, driver streaming %v; want once, polling", opened, f.d.streaming())
	}
}
