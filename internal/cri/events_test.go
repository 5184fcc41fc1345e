package cri

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/internal/cri/critest"
	"github.com/bpfmount/bpfmount/internal/fault"
)

// WatchPods says when the stream is open (""), then names the pod of each
// sandbox and container event; it ends with the context, with ErrNoEvents
// for a runtime without events, and with an Unavailable error, not
// ErrNoEvents, when the stream breaks.
func TestWatchPods(t *testing.T) {
	rt, ep := critest.Start(t)
	c, err := Dial(ep)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan string, 16)
	watch := func(ctx context.Context) chan error {
		done := make(chan error, 1)
		go func() { done <- c.WatchPods(ctx, func(uid string) { got <- uid }) }()
		return done
	}
	next := func() string {
		t.Helper()
		select {
		case uid := <-got:
			return uid
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
			return ""
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := watch(ctx)
	if uid := next(); uid != "" {
		t.Fatalf("first call names %q, want \"\" (the stream is open)", uid)
	}
	for open, _ := rt.Streams(); open != 1; open, _ = rt.Streams() {
		time.Sleep(time.Millisecond)
	}
	rt.RunSandbox(uid, "sb-1", "/var/run/netns/cni-1")
	rt.RunContainer(uid, "sb-1", "app", "c-1", 42)
	rt.StopSandbox("sb-1")
	for i, what := range []string{"sandbox started", "container started", "sandbox stopped"} {
		if got := next(); got != uid {
			t.Errorf("event %d (%s) names pod %q, want %q", i, what, got, uid)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("after cancel: %v", err)
	}

	done = watch(context.Background())
	next()
	for open, _ := rt.Streams(); open != 1; open, _ = rt.Streams() {
		time.Sleep(time.Millisecond)
	}
	rt.BreakStreams()
	if err := <-done; err == nil || errors.Is(err, ErrNoEvents) || fault.Of(err) != fault.Unavailable {
		t.Errorf("broken stream: %v (kind %v)", err, fault.Of(err))
	}

	rt.SetEvents(false)
	done = watch(context.Background())
	if err := <-done; !errors.Is(err, ErrNoEvents) {
		t.Errorf("runtime without events: %v", err)
	}
	if len(got) != 0 {
		t.Errorf("a runtime without events was reported open")
	}
}

// A runtime that ends the stream with OK before any event (CRI-O with
// enable_pod_events = false) serves no events: ErrNoEvents, not a broken
// stream to reopen at once.
func TestWatchPodsEndsAtOnce(t *testing.T) {
	rt, ep := critest.Start(t)
	rt.EndEventsAtOnce(true)
	c, err := Dial(ep)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	opened := false
	err = c.WatchPods(context.Background(), func(string) { opened = true })
	if !errors.Is(err, ErrNoEvents) || !strings.Contains(err.Error(), "enable_pod_events = true") {
		t.Errorf("stream that ended at once: %v, want ErrNoEvents naming enable_pod_events", err)
	}
	if opened {
		t.Errorf("a stream that ended at once was reported open")
	}
}
