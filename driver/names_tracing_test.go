package driver

import (
	"strings"
	"testing"

	"github.com/bpfmount/bpfmount/loader"
)

// A name held by a tracing program says where that program runs: its
// target, not an (empty) interface.
func TestNameTakenNamesTracingTarget(t *testing.T) {
	have := loader.Identity{Digest: "sha256:00", Program: "count_tracepoint", Hook: loader.HookTracepoint, AttachTo: "sched/sched_process_exec"}
	want := have
	want.AttachTo = "sched/sched_switch"
	err := nameTaken("exec", &nameHolder{key: have.Key(), id: have, progID: 7, holder: "volume vol-1"}, want)
	if err == nil || !strings.Contains(err.Error(), `tracepoint program "count_tracepoint" on sched/sched_process_exec (program id 7`) {
		t.Fatalf("got %v, want the tracepoint's target named", err)
	}
	tcx := loader.Identity{Digest: "sha256:00", Program: "p", Hook: loader.HookTCX, Interface: "eth0", Direction: loader.Ingress, Priority: 5}
	other := tcx
	other.Priority = 6
	err = nameTaken("fw", &nameHolder{key: tcx.Key(), id: tcx, progID: 8, holder: "volume vol-2"}, other)
	if err == nil || !strings.Contains(err.Error(), `tcx program "p" on eth0 ingress with priority 5`) {
		t.Fatalf("got %v, want the interface and direction named", err)
	}
	skb := loader.Identity{Digest: "sha256:00", Program: "p", Hook: loader.HookCgroupSKB, Cgroup: "/sys/fs/cgroup/pod", Direction: loader.Egress, Priority: 1000}
	other = skb
	other.Cgroup = "/sys/fs/cgroup/other"
	err = nameTaken("skb", &nameHolder{key: skb.Key(), id: skb, progID: 9, holder: "volume vol-3"}, other)
	if err == nil || !strings.Contains(err.Error(), `cgroup_skb program "p" on cgroup /sys/fs/cgroup/pod egress (program id 9`) {
		t.Fatalf("got %v, want the cgroup and direction named, no priority", err)
	}
}
