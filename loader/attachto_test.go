package loader

import (
	"fmt"
	"strings"
	"testing"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/test/programs"
)

// One attachTo serves tracing targets and cgroup_sock_addr operations,
// each checked by its hook's rules; every other hook refuses one.
func TestCheckAttachTo(t *testing.T) {
	for _, tc := range []struct {
		h    Hook
		s    string
		want string // "" = valid
	}{
		{HookTracepoint, "sched/sched_switch", ""},
		{HookUprobe, "/usr/bin/bash:readline", ""},
		{HookKprobe, "", "needs attachTo"},
		{HookTracepoint, "connect4", "GROUP/NAME"},
		{HookCgroupSockAddr, "connect4", ""},
		{HookCgroupSockAddr, "", ""}, // the section names it
		{HookCgroupSockAddr, "sched/sched_switch", "not a socket operation"},
		{HookCgroupSKB, "connect4", "applies to tracing types"},
		{HookSockOps, "connect4", "and cgroup_sock_addr, not sock_ops"},
		{HookXDP, "a/b", "applies to tracing types"},
		{HookTCX, "", ""},
		{HookSockOps, "", ""},
	} {
		err := CheckAttachTo(tc.h, tc.s)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s %q: %v", tc.h, tc.s, err)
			}
			continue
		}
		if fault.Of(err) != fault.Invalid || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %q: got %v, want Invalid containing %q", tc.h, tc.s, err, tc.want)
		}
	}
}

// The target lock covers an interface (per network namespace), a cgroup,
// or a tracing target; no two kinds share a name.
func TestLockNamesPerTarget(t *testing.T) {
	ids := []Identity{
		{Hook: HookTCX, Interface: "eth0"},
		{Hook: HookTCX, Interface: "eth0", Netns: "/proc/1/ns/net"},
		{Hook: HookSockOps, Cgroup: "/sys/fs/cgroup/a"},
		{Hook: HookCgroupSockAddr, Cgroup: "/sys/fs/cgroup/b", AttachTo: "connect4"},
		{Hook: HookTracepoint, AttachTo: "sched/sched_switch"},
		{Hook: HookKprobe, AttachTo: "tcp_connect"},
		{Hook: HookKretprobe, AttachTo: "tcp_connect"},
	}
	seen := map[string]Identity{}
	for _, id := range ids {
		n := lockName(id)
		if prev, dup := seen[n]; dup {
			t.Fatalf("%+v and %+v share lock %q", prev, id, n)
		}
		seen[n] = id
	}
	// Programs on one target share its lock: the XDP one with an XDP
	// one, a cgroup's with another hook on that cgroup.
	if lockName(Identity{Hook: HookXDP, Interface: "eth0"}) != lockName(ids[0]) ||
		lockName(Identity{Hook: HookCgroupSKB, Cgroup: "/sys/fs/cgroup/a", Direction: Egress}) != lockName(ids[2]) ||
		lockName(Identity{Hook: HookKprobe, AttachTo: "tcp_connect", Program: "other"}) != lockName(ids[5]) {
		t.Fatal("one target, several lock names")
	}
}

// The merge of the cgroup and tracing fields left the keys of network and
// tracing identities as they were (computed with the tracing release).
func TestIdentityKeysUnchanged(t *testing.T) {
	tracing := Identity{Digest: "sha256:00", Program: "count", Hook: HookTracepoint, AttachTo: "sched/sched_switch"}
	network := Identity{Digest: "sha256:00", Program: "xdp_pass", Hook: HookXDP, Interface: "eth0", Priority: 1000, ProceedOn: []string{"pass"}, XDPMode: XDPModeAuto}
	if got := tracing.Key(); got != "101a253a82916427f6b32a05" {
		t.Errorf("tracing key %s changed", got)
	}
	if got := network.Key(); got != "3dd42a36ac58b26099554944" {
		t.Errorf("network key %s changed", got)
	}
}

// Hooks lists every kind once.
func TestHooksListEveryKind(t *testing.T) {
	if len(Hooks) != len(NetworkHooks)+len(TracingHooks)+len(CgroupHooks) {
		t.Fatalf("Hooks %v", Hooks)
	}
	for _, h := range CgroupHooks {
		if !IsCgroupHook(h) || IsTracing(h) || programTypeOf(h) != cgroupProgTypes[h] {
			t.Errorf("%s misclassified", h)
		}
	}
	for _, h := range TracingHooks {
		if IsCgroupHook(h) || !IsTracing(h) {
			t.Errorf("%s misclassified", h)
		}
	}
}

// A tracing program refuses a cgroup or a network namespace: a request
// without type whose attachTo is a socket operation got its pod's cgroup,
// and the labels then named a tracing type.
func TestResolveTracingRefusesCgroup(t *testing.T) {
	img, spec := objectImage(t, programs.TraceCountObject(), "oci:/x:v1")
	for _, req := range []Request{
		{Program: "count_kprobe", AttachTo: "connect4", Cgroup: "/sys/fs/cgroup/kubepods/pod1"},
		{Program: "count_tracepoint", AttachTo: "sched/sched_switch", Netns: "/proc/1/ns/net"},
	} {
		_, err := resolve(req, img, spec)
		if fault.Of(err) != fault.Invalid || !strings.Contains(err.Error(), "not to a cgroup or a network namespace") {
			t.Errorf("%+v: got %v", req, err)
		}
	}
	// With no attachTo, the missing target is what is said.
	_, err := resolve(Request{Program: "count_kprobe", Cgroup: "/sys/fs/cgroup/kubepods/pod1"}, img, spec)
	if !strings.Contains(fmt.Sprint(err), "needs attachTo") {
		t.Errorf("got %v", err)
	}
}
