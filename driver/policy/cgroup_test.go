package policy

import (
	"strings"
	"testing"
)

const cgroupPolicy = `
apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: own-traffic
  namespaces: ["team-a"]
  images: ["registry.example/bpf/*"]
  hooks: ["cgroup_skb", "sock_ops"]
- name: node-net
  namespaces: ["netops"]
  images: ["registry.example/bpf/*"]
  interfaces: ["eth*"]
local:
  hooks: ["xdp", "cgroup_sock_addr"]
`

// A rule listing cgroup hooks lets a namespace program its own pods'
// sockets and nothing of the node's; a rule for interfaces, hooks
// omitted, grants no cgroup hook.
func TestCgroupHooksAreGrantedApart(t *testing.T) {
	p := mustParse(t, cgroupPolicy)
	img := "registry.example/bpf/x:v1"
	for _, tc := range []struct {
		name  string
		r     Request
		allow bool
		why   string
	}{
		{"own cgroup, listed hook", Request{Namespace: "team-a", Image: img, Hook: "cgroup_skb", Priority: 1}, true, ""},
		{"own cgroup, hook from the image", Request{Namespace: "team-a", Image: img, Priority: 1}, true, ""},
		{"own cgroup, unlisted hook", Request{Namespace: "team-a", Image: img, Hook: "cgroup_sock_addr", Priority: 1}, false, `not "cgroup_sock_addr"`},
		{"no right over an interface", Request{Namespace: "team-a", Image: img, Interface: "eth0", Hook: "tcx", Priority: 1}, false, `not "tcx"`},
		{"no right over an interface, hook unknown", Request{Namespace: "team-a", Image: img, Interface: "eth0", Priority: 1}, true, ""},
		{"interface rule grants no cgroup hook", Request{Namespace: "netops", Image: img, Hook: "cgroup_skb", Priority: 1}, false, `not "cgroup_skb"`},
		{"interface rule, no interface, hook unknown", Request{Namespace: "netops", Image: img, Priority: 1}, false, "none of them a cgroup hook"},
		{"interface rule on its interface", Request{Namespace: "netops", Image: img, Interface: "eth1", Hook: "xdp", Priority: 1}, true, ""},
		{"local cgroup hook listed", Request{Local: true, Image: img, Cgroup: "/sys/fs/cgroup/x", Hook: "cgroup_sock_addr", Priority: 1}, true, ""},
		{"local cgroup hook not listed", Request{Local: true, Image: img, Cgroup: "/sys/fs/cgroup/x", Hook: "sock_ops", Priority: 1}, false, `cgroup "/sys/fs/cgroup/x"`},
	} {
		d := p.Decide(tc.r)
		if d.Allowed != tc.allow || !strings.Contains(d.Reason, tc.why) {
			t.Errorf("%s: %+v", tc.name, d)
		}
	}
	// A pod's denial says it was about its own cgroup.
	d := p.Decide(Request{Namespace: "netops", Image: img, Hook: "sock_ops", Priority: 1})
	if !strings.Contains(d.Reason, "on its own cgroup") {
		t.Errorf("denial %q does not name the pod's own cgroup", d.Reason)
	}
}

func TestCgroupHookNamesParse(t *testing.T) {
	_, err := Parse([]byte(strings.Replace(cgroupPolicy, `"sock_ops"]`, `"sockops"]`, 1)))
	if err == nil || !strings.Contains(err.Error(), `"sock_ops"`) {
		t.Fatalf("got %v", err)
	}
}

const mixedPolicy = `
apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: observe
  namespaces: ["observe"]
  images: ["registry.example/bpf/*"]
  interfaces: ["eth*"]
  hooks: ["tracepoint", "cgroup_sock_addr", "cgroup_skb", "tcx"]
  attachTo: ["syscalls/*", "connect*"]
  priorities: {min: 10, max: 20}
- name: tracing-only
  namespaces: ["trace"]
  images: ["registry.example/bpf/*"]
  hooks: ["kprobe"]
- name: sockaddr-only
  namespaces: ["sock"]
  images: ["registry.example/bpf/*"]
  hooks: ["cgroup_sock_addr"]
- name: network
  namespaces: ["net"]
  images: ["registry.example/bpf/*"]
`

// Tracing and cgroup hooks together: each granted only where listed; the
// attachTo patterns restrict tracing targets and cgroup_sock_addr
// operations alike; interfaces and priorities restrict neither.
func TestTracingAndCgroupHooksTogether(t *testing.T) {
	p := mustParse(t, mixedPolicy)
	img := "registry.example/bpf/x:v1"
	req := func(ns, hook, attachTo string) Request {
		return Request{Namespace: ns, Image: img, Hook: hook, AttachTo: attachTo}
	}
	for _, tc := range []struct {
		name string
		r    Request
		why  string // "" = allowed
	}{
		{"tracing target in the patterns", req("observe", "tracepoint", "syscalls/sys_enter_execve"), ""},
		{"tracing target outside", req("observe", "tracepoint", "sched/sched_switch"), "allows attachTo"},
		{"operation in the patterns", req("observe", "cgroup_sock_addr", "connect6"), ""},
		{"operation outside the patterns", req("observe", "cgroup_sock_addr", "bind4"), `allows attachTo ["syscalls/*", "connect*"] only`},
		{"operation from the section, not known yet", req("observe", "cgroup_sock_addr", ""), ""},
		{"cgroup_skb has no attachTo and no priority", req("observe", "cgroup_skb", ""), ""},
		{"sock_ops not listed", req("observe", "sock_ops", ""), `not "sock_ops"`},
		{"kprobe not listed", req("observe", "kprobe", "syscalls/x"), `not "kprobe"`},
		{"network request keeps its priority rule", Request{Namespace: "observe", Image: img, Hook: "tcx", Interface: "eth0", Priority: 5}, "priorities 10..20"},
		{"type unknown, no interface, attachTo: tracing may follow", req("trace", "", "tcp_connect"), ""},
		{"type unknown, no interface, no attachTo: only a cgroup hook can follow", req("trace", "", ""), "none of them a cgroup hook"},
		{"type unknown, attachTo, neither kind listed", Request{Namespace: "net", Image: img, AttachTo: "connect4"}, "none of them a tracing hook"},
		{"type unknown, operation: cgroup_sock_addr may follow", req("sock", "", "connect4"), ""},
		{"a cgroup-only rule grants no tracing", req("sock", "kprobe", "tcp_connect"), `not "kprobe"`},
		{"a tracing-only rule grants no cgroup hook", req("trace", "cgroup_sock_addr", "connect4"), `not "cgroup_sock_addr"`},
		{"no rule listing both grants nothing on interfaces", Request{Namespace: "sock", Image: img, Hook: "xdp", Interface: "eth0", Priority: 1}, `not "xdp"`},
	} {
		d := p.Decide(tc.r)
		if tc.why == "" {
			if !d.Allowed {
				t.Errorf("%s: denied: %s", tc.name, d.Reason)
			}
			continue
		}
		if d.Allowed || !strings.Contains(d.Reason, tc.why) {
			t.Errorf("%s: got allowed=%v %q, want a denial containing %q", tc.name, d.Allowed, d.Reason, tc.why)
		}
	}
}
