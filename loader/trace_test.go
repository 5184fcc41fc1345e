package loader

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/bytecode"
	"github.com/bpfmount/bpfmount/test/programs"
)

func TestParseAttachTo(t *testing.T) {
	for _, c := range []struct {
		h    Hook
		s    string
		want Target
	}{
		{HookTracepoint, "sched/sched_process_exec", Target{Group: "sched", Name: "sched_process_exec"}},
		{HookKprobe, "tcp_connect", Target{Symbol: "tcp_connect"}},
		{HookKprobe, "tcp_connect+0x10", Target{Symbol: "tcp_connect", Offset: 16}},
		{HookKprobe, "foo.isra.0+8", Target{Symbol: "foo.isra.0", Offset: 8}},
		{HookKretprobe, "tcp_connect", Target{Symbol: "tcp_connect"}},
		{HookFentry, "do_unlinkat", Target{Symbol: "do_unlinkat"}},
		{HookFexit, "do_unlinkat", Target{Symbol: "do_unlinkat"}},
		{HookUprobe, "/usr/bin/bash:readline", Target{Path: "/usr/bin/bash", Symbol: "readline"}},
		{HookUprobe, "/usr/bin/bash:readline+4", Target{Path: "/usr/bin/bash", Symbol: "readline", Offset: 4}},
		{HookUretprobe, "/bin/app:0x4a1f0", Target{Path: "/bin/app", Address: 0x4a1f0}},
		{HookUprobe, "/bin/app:main.(*T).Serve", Target{Path: "/bin/app", Symbol: "main.(*T).Serve"}},
		{HookUprobe, "/odd:dir/bin:sym", Target{Path: "/odd:dir/bin", Symbol: "sym"}},
	} {
		got, err := ParseAttachTo(c.h, c.s)
		if err != nil || got != c.want {
			t.Errorf("%s %q: got %+v, %v; want %+v", c.h, c.s, got, err, c.want)
		}
	}
	for _, c := range []struct {
		h        Hook
		s, wants string
	}{
		{HookTracepoint, "", "needs attachTo"},
		{HookTracepoint, "sched", "GROUP/NAME"},
		{HookTracepoint, "a/b/c", "GROUP/NAME"},
		{HookTracepoint, "../x", "GROUP/NAME"},
		{HookKprobe, "f+", "not a number"},
		{HookKprobe, "1f", "kernel function"},
		{HookKretprobe, "f+1", "offset applies to kprobe only"},
		{HookFexit, "f+1", "offset applies to kprobe only"},
		{HookUprobe, "rel/bin:s", "absolute path"},
		{HookUprobe, "/a/./b:s", "absolute path"},
		{HookUprobe, "/:s", "absolute path"},
		{HookUprobe, "/bin/x:", "not a symbol name"},
		{HookUprobe, "/bin/x:0x0", "non-zero"},
		{HookUprobe, "/bin/x:s+q", "not a number"},
		{HookUprobe, "/bin/x" + strings.Repeat("a", 1100) + ":s", "more than the 1024"},
		{HookXDP, "a/b", "applies to tracing types"},
	} {
		_, err := ParseAttachTo(c.h, c.s)
		if err == nil || !strings.Contains(err.Error(), c.wants) || fault.Of(err) != fault.Invalid {
			t.Errorf("%s %q: got %v, want Invalid containing %q", c.h, c.s, err, c.wants)
		}
	}
}

// attachTo is part of the identity, and network identities keep the keys
// they had before it existed (pins made by older versions are adopted).
func TestIdentityKeyAttachTo(t *testing.T) {
	a := Identity{Digest: "sha256:00", Program: "p", Hook: HookTracepoint, AttachTo: "sched/sched_switch"}
	b := a
	b.AttachTo = "sched/sched_process_exec"
	if a.Key() == b.Key() {
		t.Fatal("a different attachTo kept the key")
	}
	net := Identity{Digest: "sha256:00", Program: "p", Hook: HookXDP, Interface: "eth0", Priority: 5, XDPMode: "auto"}
	if got, want := net.Key(), "c8a1e54faff3d461b525e6a9"; got != want {
		t.Fatalf("network identity key changed: %s, want %s", got, want)
	}
}

func TestCheckHook(t *testing.T) {
	l := &Loader{node: "n1", missing: func() map[Hook]string {
		return map[Hook]string{HookKprobe: "kprobe events (CONFIG_KPROBE_EVENTS)"}
	}}
	err := l.CheckHook(HookKprobe)
	if fault.Of(err) != fault.Precondition || !strings.Contains(err.Error(), "CONFIG_KPROBE_EVENTS") {
		t.Fatalf("got %v, want a Precondition naming the feature", err)
	}
	if err := l.CheckHook(HookTracepoint); err != nil {
		t.Fatal(err)
	}
}

// Image builds label tracing programs as bpfman does, so that a volume
// without a type attaches them as their section says.
func TestTracingLabels(t *testing.T) {
	progs, _, err := bytecode.Describe(programs.TraceCountObject())
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]Hook{
		"count_tracepoint": HookTracepoint, "count_kprobe": HookKprobe, "count_kretprobe": HookKretprobe,
		"count_uprobe": HookUprobe, "count_uretprobe": HookUretprobe, "count_fentry": HookFentry, "count_fexit": HookFexit,
	} {
		if got := Hook(progs[name]); got != want {
			t.Errorf("%s labelled %q, want %q", name, got, want)
		}
		if programTypeOf(want) == ebpf.UnspecifiedProgram {
			t.Errorf("hook %s has no program type", want)
		}
	}
}

// resolve on the trace_count image: the type from the labels or the
// request, the network keys refused on tracing types and attachTo on
// network ones, all before the kernel is touched.
func TestResolveTracing(t *testing.T) {
	img, spec := objectImage(t, programs.TraceCountObject(), "oci:/x:v1")
	id, err := resolve(Request{Program: "count_tracepoint", AttachTo: "sched/sched_switch"}, img, spec)
	if err != nil || id.Hook != HookTracepoint || id.AttachTo != "sched/sched_switch" || id.Priority != 0 || id.Interface != "" {
		t.Fatalf("type from the labels: %+v, %v", id, err)
	}
	for _, c := range []struct {
		req  Request
		want string
	}{
		{Request{Program: "count_tracepoint", AttachTo: "sched/x", Interface: "eth0"}, "interface does not apply to type tracepoint"},
		{Request{Program: "count_kprobe", AttachTo: "f", Priority: 5}, "priority does not apply to type kprobe"},
		{Request{Program: "count_uprobe", AttachTo: "/b:s", ProceedOn: []string{"pass"}}, "proceedOn does not apply"},
		{Request{Program: "count_fentry", AttachTo: "f", Direction: Ingress}, "direction does not apply"},
		{Request{Program: "count_fexit", AttachTo: "f", XDPMode: XDPModeSKB}, "xdpMode does not apply"},
		{Request{Program: "count_tracepoint"}, "type tracepoint needs attachTo"},
		{Request{Program: "count_kprobe", Hook: HookTracepoint, AttachTo: "a/b"}, "is a Kprobe program; it cannot attach to hook \"tracepoint\""},
		{Request{Program: "count_kprobe", Hook: HookXDP, Interface: "eth0"}, "cannot attach to hook \"xdp\""},
		{Request{Program: "count_kretprobe", AttachTo: "f+8"}, "offset applies to kprobe only"},
	} {
		_, err := resolve(c.req, img, spec)
		if err == nil || !strings.Contains(err.Error(), c.want) || fault.Of(err) != fault.Invalid {
			t.Errorf("%+v: got %v, want Invalid containing %q", c.req, err, c.want)
		}
	}
	// fentry's target is set at load, from attachTo.
	cs, err := collectionFor(Identity{Program: "count_fexit", Hook: HookFexit, AttachTo: "do_unlinkat"}, spec)
	if err != nil {
		t.Fatal(err)
	}
	if p := cs.Programs["count_fexit"]; p.AttachTo != "do_unlinkat" || p.AttachType != ebpf.AttachTraceFExit || len(cs.Programs) != 1 {
		t.Fatalf("fexit spec: AttachTo %q, type %s, %d programs", p.AttachTo, p.AttachType, len(cs.Programs))
	}
	if spec.Programs["count_fexit"].AttachTo != "placeholder" {
		t.Fatal("collectionFor changed the cached spec")
	}
}

// The tracing probes (the kernel's BTF parsed, a trampoline attached) run
// at the first tracing request, not when the loader starts, and once: a
// network hook never waits for them, and a missing feature is still
// refused with Precondition naming it.
func TestTracingProbesLazy(t *testing.T) {
	calls := 0
	orig := probeTracing
	t.Cleanup(func() { probeTracing = orig })
	probeTracing = func() map[Hook]string {
		calls++
		return map[Hook]string{HookFentry: "BPF trampolines (test)", HookFexit: "BPF trampolines (test)"}
	}
	l, err := New(Options{Root: t.TempDir(), Fetcher: bytecode.Layout{}, NodeName: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 0 {
		t.Fatalf("New probed the tracing features %d times; want none before a tracing request", calls)
	}
	if err := l.CheckHook(HookXDP); err != nil || calls != 0 {
		t.Fatalf("CheckHook(xdp) = %v after %d probes; want nil and none", err, calls)
	}
	if err := l.CheckHook(HookTracepoint); err != nil || calls != 1 {
		t.Fatalf("CheckHook(tracepoint) = %v after %d probes; want nil and one", err, calls)
	}
	for _, h := range []Hook{HookFentry, HookFexit} {
		err := l.CheckHook(h)
		if fault.Of(err) != fault.Precondition || !strings.Contains(err.Error(), "BPF trampolines (test)") || !strings.Contains(err.Error(), `node "n1"`) {
			t.Fatalf("CheckHook(%s) = %v; want a Precondition naming the feature", h, err)
		}
	}
	if calls != 1 {
		t.Fatalf("probed %d times; want once per loader", calls)
	}
}
