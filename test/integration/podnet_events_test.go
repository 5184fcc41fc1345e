package integration

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

// On the real kernel, the runtime's events drive a pod's attach: with the
// poll and the safety net a minute apart, only an event explains an
// attach within waitStatus's seconds. The program is attached in the
// pod's sandbox on the runtime's event and counts what the pod's eth0
// sends; the sandbox replaced while the daemon is down, the restarted
// daemon attaches in the new one as soon as its stream is open (it looks
// at every pod then, events having been missed), then follows a further
// replacement's event.
func TestPodInterfaceAttachOnEvent(t *testing.T) {
	e := &podnetEnv{newSandboxEnvPolling(t, testenv.TCXOrderObject, "own-interface", `  interfaces: ["pod:*"]
`, time.Minute, time.Minute)}
	ctx := context.Background()
	uid := uuid.NewString()
	target := filepath.Join(e.dir, "vol")
	if _, err := e.d.Node.NodePublishVolume(ctx, publishReq("ev-1", target, podnetAttrs(e.img, uid, "pod"), true)); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, target, func(s map[string]string) bool { return s["state"] == "waiting" })
	streamOpen := func(opened int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for open, n := e.rt.Streams(); open != 1 || n != opened; open, n = e.rt.Streams() {
			if time.Now().After(deadline) {
				t.Fatalf("event streams open %d, opened %d; want 1 and %d", open, n, opened)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	streamOpen(1)
	attachedIn := func(v *testenv.Veth, sandbox string) {
		t.Helper()
		waitStatus(t, target, func(s map[string]string) bool { return s["state"] == "attached" && s["sandbox"] == sandbox })
		before := hits(t, target)
		if err := v.Send(5, 60); err != nil { // from the peer's side: what the pod's eth0 sends
			t.Fatal(err)
		}
		if n := hits(t, target) - before; n < 5 {
			t.Fatalf("in sandbox %s the program counted %d of 5 frames", sandbox, n)
		}
	}
	first := testenv.NewPodVeth(t, "eth0")
	e.rt.RunSandbox(uid, "sb-1", first.NetnsPath())
	attachedIn(first, "sb-1")

	e.d.Stop()
	second := testenv.NewPodVeth(t, "eth0")
	e.rt.StopSandbox("sb-1")
	e.rt.RunSandbox(uid, "sb-2", second.NetnsPath())
	e.d.Restart(e.opts)
	attachedIn(second, "sb-2")
	streamOpen(2)

	third := testenv.NewPodVeth(t, "eth0")
	e.rt.StopSandbox("sb-2")
	e.rt.RunSandbox(uid, "sb-3", third.NetnsPath())
	attachedIn(third, "sb-3")

	if _, err := e.d.Node.NodeUnpublishVolume(ctx, unpublishReq("ev-1", target)); err != nil {
		t.Fatal(err)
	}
	e.d.AssertClean(t, nil, target)
}
