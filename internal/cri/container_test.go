package cri

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/internal/cri/critest"
	"github.com/bpfmount/bpfmount/internal/fault"
)

// PodContainer finds the running container of a name in the pod's current
// sandbox, the newest, and its main process; none is ErrNoContainer.
func TestPodContainer(t *testing.T) {
	f, ep := critest.Start(t)
	c, err := Dial(ep)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	noContainer := func(what string) {
		t.Helper()
		if _, err := c.PodContainer(ctx, uid, "app"); !errors.Is(err, ErrNoContainer) || fault.Of(err) != fault.NotFound {
			t.Fatalf("%s: got %v, want ErrNoContainer", what, err)
		}
	}
	noContainer("no sandbox")
	f.RunSandbox(uid, "sb1", "/var/run/netns/a")
	noContainer("no container yet")
	// Same name in another pod, another name in this one.
	f.RunContainer("00000000-0000-0000-0000-000000000000", "sbx", "app", "c-other", 99)
	f.RunContainer(uid, "sb1", "sidecar", "c-side", 98)
	noContainer("only other containers")
	f.RunContainer(uid, "sb1", "app", "c1", 100)
	got, err := c.PodContainer(ctx, uid, "app")
	if err != nil || got.ID != "c1" || got.PID != 100 {
		t.Fatalf("got %+v, %v; want c1 with pid 100", got, err)
	}
	// A restart: the old one exits, the new one runs.
	f.ExitContainer("c1")
	noContainer("exited")
	f.RunContainer(uid, "sb1", "app", "c2", 200)
	if got, err := c.PodContainer(ctx, uid, "app"); err != nil || got.ID != "c2" || got.PID != 200 {
		t.Fatalf("after restart got %+v, %v; want c2 with pid 200", got, err)
	}
	// A new sandbox: the old sandbox's containers are not the pod's.
	f.StopSandbox("sb1")
	f.RunSandbox(uid, "sb2", "/var/run/netns/b")
	noContainer("new sandbox, container not started")
	// A runtime that names no process is an error, not a container.
	f.RunContainer(uid, "sb2", "app", "c3", 0)
	if _, err := c.PodContainer(ctx, uid, "app"); err == nil || errors.Is(err, ErrNoContainer) {
		t.Fatalf("no pid: got %v, want an error", err)
	}
}
