package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/deploy/examples/exec-events/events"
	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/test/programs"
)

func traceAttrs(img, program, typ, attachTo string) map[string]string {
	a := map[string]string{"image": img, "program": program, "attachTo": attachTo}
	if typ != "" {
		a["type"] = typ
	}
	return a
}

// slotCount reads one slot of trace_count's counts map through the pin
// mounted at the volume's target.
func slotCount(t *testing.T, target string, slot uint32) uint64 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(target, "counts"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("opening the counts map through the volume: %v", err)
	}
	defer m.Close()
	var n uint64
	if err := m.Lookup(slot, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// execSelf execs a process: this test binary, running no test (it is there
// in the VMs too, where /bin/true may not be).
func execSelf(t *testing.T) {
	t.Helper()
	run(t, os.Args[0], "-test.run=^$")
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", name, err, out)
	}
}

// A tracepoint program, its type taken from the image's labels, counts
// execs; it stays attached across a daemon restart and stops when
// unpublished.
func TestTracingTracepointFires(t *testing.T) {
	testenv.Tracefs(t)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	img := testenv.Layout(t, testenv.TraceCountObject, "v1")
	target := filepath.Join(testenv.ShortTempDir(t), "vol")
	ctx := context.Background()

	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-tp", target, traceAttrs(img, "count_tracepoint", "", "sched/sched_process_exec"), true)); err != nil {
		t.Fatalf("publish: %v", err)
	}
	rec, err := d.Record("vol-tp")
	if err != nil || rec == nil || rec.Identity.Hook != loader.HookTracepoint || rec.Identity.AttachTo != "sched/sched_process_exec" {
		t.Fatalf("record %+v, %v: want a tracepoint on sched/sched_process_exec", rec, err)
	}
	before := slotCount(t, target, programs.SlotTracepoint)
	for i := 0; i < 5; i++ {
		execSelf(t)
	}
	if after := slotCount(t, target, programs.SlotTracepoint); after < before+5 {
		t.Fatalf("counter went from %d to %d after 5 execs", before, after)
	}

	// The pinned link keeps it attached while the daemon is away, and the
	// new daemon adopts it.
	d.Restart(testenv.DaemonOptions{})
	before = slotCount(t, target, programs.SlotTracepoint)
	execSelf(t)
	if after := slotCount(t, target, programs.SlotTracepoint); after <= before {
		t.Fatalf("counter stuck at %d after a restart and an exec", after)
	}
	progs := d.Loader.Programs()
	if len(progs) != 1 || !progs[0].Attached || progs[0].Identity.AttachTo != "sched/sched_process_exec" {
		t.Fatalf("after restart the loader holds %+v", progs)
	}

	// Keep a handle on the map to see that nothing counts after unpublish.
	m, err := ebpf.LoadPinnedMap(filepath.Join(target, "counts"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-tp", target)); err != nil {
		t.Fatalf("unpublish: %v", err)
	}
	d.AssertClean(t, nil, target)
	var was, now uint64
	m.Lookup(programs.SlotTracepoint, &was)
	execSelf(t)
	m.Lookup(programs.SlotTracepoint, &now)
	if now != was {
		t.Fatalf("the tracepoint program still runs after unpublish (%d -> %d)", was, now)
	}
}

// Two volumes with the same tracepoint share one program; another
// tracepoint is another program.
func TestTracingAttachToIsIdentity(t *testing.T) {
	testenv.Tracefs(t)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	img := testenv.Layout(t, testenv.TraceCountObject, "v1")
	dir := testenv.ShortTempDir(t)
	ctx := context.Background()
	var targets []string
	for i, tp := range []string{"sched/sched_process_exec", "sched/sched_process_exec", "sched/sched_process_fork"} {
		target := filepath.Join(dir, "v"+strconv.Itoa(i))
		targets = append(targets, target)
		if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-"+strconv.Itoa(i), target, traceAttrs(img, "count_tracepoint", "tracepoint", tp), true)); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if n := len(d.Loader.Programs()); n != 2 {
		t.Fatalf("%d programs loaded, want 2 (one shared)", n)
	}
	for i, target := range targets {
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-"+strconv.Itoa(i), target)); err != nil {
			t.Fatal(err)
		}
	}
	d.AssertClean(t, nil, targets...)
}

// A uprobe and a uretprobe on a function of a host binary fire once per
// call, also after a daemon restart.
func TestTracingUprobeFires(t *testing.T) {
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	img := testenv.Layout(t, testenv.TraceCountObject, "v1")
	bin := testenv.BuildProbeTarget(t)
	dir := testenv.ShortTempDir(t)
	ctx := context.Background()
	for _, c := range []struct {
		typ  string
		slot uint32
	}{{"uprobe", programs.SlotUprobe}, {"uretprobe", programs.SlotUretprobe}} {
		target := filepath.Join(dir, c.typ)
		vol := "vol-" + c.typ
		if _, err := d.Node.NodePublishVolume(ctx, publishReq(vol, target, traceAttrs(img, "count_"+c.typ, c.typ, bin+":"+testenv.ProbeTargetSymbol), true)); err != nil {
			t.Fatalf("publish %s: %v", c.typ, err)
		}
		before := slotCount(t, target, c.slot)
		run(t, bin, "7")
		if after := slotCount(t, target, c.slot); after != before+7 {
			t.Fatalf("%s counter went from %d to %d after 7 calls", c.typ, before, after)
		}
		// Still attached, once, after a restart.
		d.Restart(testenv.DaemonOptions{})
		before = slotCount(t, target, c.slot)
		run(t, bin, "3")
		if after := slotCount(t, target, c.slot); after != before+3 {
			t.Fatalf("after a restart the %s counter went from %d to %d after 3 calls", c.typ, before, after)
		}
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(vol, target)); err != nil {
			t.Fatal(err)
		}
		d.AssertClean(t, nil, target)
	}
}

// Targets that do not exist are the request's fault, hooks the kernel
// cannot run are the node's; neither leaves anything behind.
func TestTracingRefusals(t *testing.T) {
	testenv.Tracefs(t)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	img := testenv.Layout(t, testenv.TraceCountObject, "v1")
	bin := testenv.BuildProbeTarget(t)
	dir := testenv.ShortTempDir(t)
	cases := []struct {
		name, program, typ, attachTo string
		code                         codes.Code
		fragment                     string
	}{
		{"no such tracepoint", "count_tracepoint", "tracepoint", "sched/no_such_event", codes.InvalidArgument, `tracepoint "sched/no_such_event" does not exist`},
		{"no such binary", "count_uprobe", "uprobe", "/no/such/binary:main", codes.InvalidArgument, `binary "/no/such/binary"`},
		{"no such symbol", "count_uprobe", "uprobe", bin + ":no_such_symbol", codes.InvalidArgument, `symbol "no_such_symbol" not found in binary`},
		{"wrong program type", "count_kprobe", "tracepoint", "sched/sched_switch", codes.InvalidArgument, "is a Kprobe program"},
		{"network key", "count_tracepoint", "tracepoint", "sched/sched_switch", codes.InvalidArgument, `"priority" does not apply`},
	}
	for _, h := range []loader.Hook{loader.HookKprobe, loader.HookKretprobe, loader.HookFentry, loader.HookFexit} {
		err := d.Loader.CheckHook(h)
		if err == nil {
			continue // this kernel runs it: the VM tests show it firing
		}
		want := "CONFIG_KPROBE_EVENTS"
		if h == loader.HookFentry || h == loader.HookFexit {
			want = "BPF trampolines"
		}
		cases = append(cases, struct {
			name, program, typ, attachTo string
			code                         codes.Code
			fragment                     string
		}{"kernel without " + string(h), "count_" + string(h), string(h), "do_sys_openat2", codes.FailedPrecondition, want})
	}
	for i, c := range cases {
		attrs := traceAttrs(img, c.program, c.typ, c.attachTo)
		if c.name == "network key" {
			attrs["priority"] = "5"
		}
		target := filepath.Join(dir, "v"+strconv.Itoa(i))
		_, err := d.Node.NodePublishVolume(context.Background(), publishReq("vol-"+strconv.Itoa(i), target, attrs, true))
		if status.Code(err) != c.code || !strings.Contains(err.Error(), c.fragment) {
			t.Errorf("%s: got %v, want %s containing %q", c.name, err, c.code, c.fragment)
		}
		d.AssertClean(t, nil, target)
	}
}

// Without tracefs, a tracepoint is refused with FailedPrecondition saying
// how to mount it, unless the loader may mount it itself.
func TestTracingTracefs(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.TracefsExclusive(t)
	if testenv.TracefsMounted() {
		t.Skip("tracefs is mounted on this node already: the test does not unmount what it did not mount")
	}
	img := testenv.Layout(t, testenv.TraceCountObject, "v1")
	dir := testenv.ShortTempDir(t)
	attrs := traceAttrs(img, "count_tracepoint", "tracepoint", "sched/sched_process_exec")

	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	_, err := d.Node.NodePublishVolume(context.Background(), publishReq("vol-a", filepath.Join(dir, "a"), attrs, true))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "mount -t tracefs") {
		t.Fatalf("got %v, want FailedPrecondition saying how to mount tracefs", err)
	}
	d.AssertClean(t, nil, filepath.Join(dir, "a"))
	d.Stop()

	t.Cleanup(func() { testenv.UnmountTracefs(t) })
	d = testenv.StartDaemon(t, testenv.DaemonOptions{ConfigureLoader: func(o *loader.Options) { o.MountTracefs = true }})
	target := filepath.Join(dir, "b")
	if _, err := d.Node.NodePublishVolume(context.Background(), publishReq("vol-b", target, attrs, true)); err != nil {
		t.Fatalf("publish with MountTracefs: %v", err)
	}
	if !testenv.TracefsMounted() {
		t.Fatal("the loader did not mount tracefs")
	}
	if _, err := d.Node.NodeUnpublishVolume(context.Background(), unpublishReq("vol-b", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, nil, target)
}

// The example: exec events arrive through the ring buffer read from the
// volume's pin.
func TestTracingExecEventsThroughRingBuffer(t *testing.T) {
	testenv.Tracefs(t)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	img := testenv.Layout(t, testenv.ExecEventsObject, "v1")
	target := filepath.Join(testenv.ShortTempDir(t), "vol")
	ctx := context.Background()
	attrs := map[string]string{"image": img, "attachTo": "sched/sched_process_exec"}
	// Read-write: a ring buffer's reader writes its consumer position.
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-exec", target, attrs, false)); err != nil {
		t.Fatalf("publish: %v", err)
	}
	r, err := events.Open(filepath.Join(target, "events"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	bin := testenv.BuildProbeTarget(t) // a binary with a name nothing else runs
	cmd := exec.Command(bin, "1")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ev, err := r.Next(deadline)
		if err != nil {
			t.Fatalf("no exec event for %s: %v", bin, err)
		}
		if ev.Filename == bin {
			if ev.PID != uint32(cmd.ProcessState.Pid()) || ev.Comm != filepath.Base(bin) {
				t.Fatalf("event %+v, want pid %d and comm %q", ev, cmd.ProcessState.Pid(), filepath.Base(bin))
			}
			break
		}
	}
	r.Close()
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-exec", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, nil, target)
}

// A pod may load a tracing program only where a rule lists its type and
// its target matches; the type from the image's labels is decided too.
func TestTracingPolicy(t *testing.T) {
	testenv.Tracefs(t)
	img := testenv.Layout(t, testenv.TraceCountObject, "v1")
	layoutDir := strings.TrimSuffix(strings.TrimPrefix(img, "oci:"), ":v1")
	pol, err := policy.Parse([]byte(`apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: observe
  namespaces: ["observe"]
  images: ["oci:` + filepath.Dir(layoutDir) + `/*"]
  hooks: ["tracepoint"]
  attachTo: ["sched/*"]
- name: network
  namespaces: ["web"]
  images: ["oci:` + filepath.Dir(layoutDir) + `/*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Configure: func(o *driver.Options) { o.Policy = policy.Static(pol) }})
	dir := testenv.ShortTempDir(t)
	pod := func(ns, program, typ, attachTo string) map[string]string {
		a := podAttrs(img, "", ns)
		delete(a, "interface")
		for k, v := range traceAttrs(img, program, typ, attachTo) {
			a[k] = v
		}
		return a
	}
	for i, c := range []struct {
		attrs    map[string]string
		fragment string
	}{
		{pod("web", "count_tracepoint", "tracepoint", "sched/sched_process_exec"), `rule "network" allows hooks ["xdp", "tc", "tcx"] only, not "tracepoint"`},
		// No type, attachTo and no interface: denied before the fetch by
		// a rule that lists no tracing or cgroup hook.
		{pod("web", "count_tracepoint", "", "sched/sched_process_exec"), `allows hooks ["xdp", "tc", "tcx"] only: none of them a tracing hook`},
		{pod("observe", "count_tracepoint", "tracepoint", "syscalls/sys_enter_getpid"), `allows attachTo ["sched/*"] only`},
		{pod("observe", "count_uprobe", "uprobe", "/bin/true:main"), `not "uprobe"`},
	} {
		target := filepath.Join(dir, "d"+strconv.Itoa(i))
		expectCode(t, d, publishReq("vol-d"+strconv.Itoa(i), target, c.attrs, true), codes.PermissionDenied, c.fragment)
		d.AssertClean(t, nil, target)
	}
	target := filepath.Join(dir, "ok")
	if _, err := d.Node.NodePublishVolume(context.Background(), publishReq("vol-ok", target, pod("observe", "count_tracepoint", "", "sched/sched_process_exec"), true)); err != nil {
		t.Fatalf("allowed tracepoint: %v", err)
	}
	if _, err := d.Node.NodeUnpublishVolume(context.Background(), unpublishReq("vol-ok", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, nil, target)
}
