package cri

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/bpfmount/bpfmount/internal/cgrouppath"
	"github.com/bpfmount/bpfmount/internal/fault"
)

// A runtime that implements the CRI event stream (GetContainerEvents:
// containerd 1.7 and later, CRI-O with enable_pod_events) says at once when a sandbox or a
// container starts, stops or goes, so callers need not ask it over and
// over. Each event carries the status of the sandbox it concerns, which
// names the pod.

// ErrNoEvents is wrapped by the error of a runtime that serves no event
// stream: it answers GetContainerEvents with Unimplemented, or, as CRI-O
// with enable_pod_events = false (its default) does, ends the stream with
// OK before it opened. Callers ask it at intervals instead.
var ErrNoEvents = errors.New("the container runtime serves no container events")

// WatchPods follows the runtime's event stream. Once the stream is open it
// calls fn(""), then fn(uid) for each event with the UID of the pod whose
// sandbox or container it concerns; "" means the event names no pod, or,
// at the start, that anything may have changed while no stream was open:
// look at every pod again. It returns when the stream ends: with ctx's
// error once ctx is done, with an error wrapping ErrNoEvents when the
// runtime implements no events, else with the stream's error.
func (c *Client) WatchPods(ctx context.Context, fn func(uid string)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.rt.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
	if err != nil {
		return c.eventsError(ctx, err)
	}
	// A runtime without events answers at once, with no header; one with
	// them may send its header only with the first event (containerd
	// does): a stream that has not ended within headerWait is open.
	header := make(chan bool, 1)
	go func() {
		md, err := stream.Header()
		header <- err == nil && md != nil
	}()
	select {
	case ok := <-header:
		if !ok {
			_, err := stream.Recv()
			if errors.Is(err, io.EOF) && ctx.Err() == nil {
				return fault.Wrap(fault.Unavailable, fmt.Errorf("the container runtime at %s ended its event stream before it opened: %w (CRI-O serves them with enable_pod_events = true)", c.endpoint, ErrNoEvents))
			}
			return c.eventsError(ctx, err)
		}
	case <-time.After(headerWait):
	}
	fn("")
	for {
		ev, err := stream.Recv()
		if err != nil {
			return c.eventsError(ctx, err)
		}
		fn(podOfEvent(ev))
	}
}

// headerWait is how long WatchPods waits for a stream to fail before it
// takes it as open.
const headerWait = 200 * time.Millisecond

// podOfEvent is the UID of the pod an event concerns, "" when it names
// none that is a UID.
func podOfEvent(ev *runtimeapi.ContainerEventResponse) string {
	sb := ev.GetPodSandboxStatus()
	uid := sb.GetMetadata().GetUid()
	if uid == "" {
		uid = sb.GetLabels()[podUIDLabel]
	}
	if !cgrouppath.ValidUID(uid) {
		return ""
	}
	return uid
}

func (c *Client) eventsError(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case status.Code(err) == codes.Unimplemented:
		return fault.Wrap(fault.Unavailable, fmt.Errorf("the container runtime at %s: %w (%v)", c.endpoint, ErrNoEvents, err))
	case errors.Is(err, io.EOF):
		return fault.Wrap(fault.Unavailable, fmt.Errorf("the container runtime at %s ended its event stream", c.endpoint))
	}
	return c.callError("following the events", err)
}
