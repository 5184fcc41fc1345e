package policy

import (
	"strings"
	"testing"
)

const tracingPolicy = `
apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: syscalls
  namespaces: ["observe"]
  images: ["registry.example/bpf/*"]
  interfaces: ["eth*"]
  hooks: ["tracepoint", "xdp"]
  attachTo: ["syscalls/*", "sched/sched_process_exec"]
  priorities: {min: 10, max: 20}
- name: network-only
  namespaces: ["web"]
  images: ["registry.example/bpf/*"]
local:
  hooks: ["uprobe"]
  attachTo: ["/usr/bin/*"]
`

func TestDecideTracing(t *testing.T) {
	p := mustParse(t, tracingPolicy)
	req := func(ns, hook, attachTo string) Request {
		return Request{Namespace: ns, Image: "registry.example/bpf/t:v1", Hook: hook, AttachTo: attachTo}
	}
	for _, c := range []struct {
		name string
		r    Request
		deny string // "" = allowed
	}{
		{"listed tracepoint", req("observe", "tracepoint", "syscalls/sys_enter_execve"), ""},
		{"exact tracepoint", req("observe", "tracepoint", "sched/sched_process_exec"), ""},
		{"tracepoint outside the patterns", req("observe", "tracepoint", "sched/sched_switch"), `allows attachTo ["syscalls/*", "sched/sched_process_exec"] only`},
		{"a star never crosses a slash", req("observe", "tracepoint", "syscalls/a/b"), "allows attachTo"},
		{"kprobe not listed", req("observe", "kprobe", "syscalls/x"), `not "kprobe"`},
		{"tracing needs a rule that lists it", req("web", "tracepoint", "syscalls/sys_enter_execve"), `allows hooks ["xdp", "tc", "tcx"] only, not "tracepoint"`},
		{"hook from the labels later", req("observe", "", "syscalls/sys_enter_execve"), ""},
		{"unknown hook, target refused already", req("observe", "", "sched/sched_switch"), "allows attachTo"},
		{"network request keeps its interface and priority rules", Request{Namespace: "observe", Image: "registry.example/bpf/t:v1", Hook: "xdp", Interface: "eth0", Priority: 5}, "priorities 10..20"},
		{"local uprobe", Request{Local: true, Image: "registry.example/bpf/t:v1", Hook: "uprobe", AttachTo: "/usr/bin/bash:readline"}, ""},
		{"local uprobe elsewhere", Request{Local: true, Image: "registry.example/bpf/t:v1", Hook: "uprobe", AttachTo: "/opt/x:main"}, `local request may not load "registry.example/bpf/t:v1" on "/opt/x:main"`},
		{"local kprobe", Request{Local: true, Image: "registry.example/bpf/t:v1", Hook: "kprobe", AttachTo: "/usr/bin/x"}, `not "kprobe"`},
	} {
		d := p.Decide(c.r)
		if c.deny == "" {
			if !d.Allowed {
				t.Errorf("%s: denied: %s", c.name, d.Reason)
			}
			continue
		}
		if d.Allowed || !strings.Contains(d.Reason, c.deny) {
			t.Errorf("%s: got allowed=%v %q, want a denial containing %q", c.name, d.Allowed, d.Reason, c.deny)
		}
	}
}

func TestParseTracingErrors(t *testing.T) {
	for _, c := range []struct{ conds, want string }{
		{`  hooks: ["kprobes"]`, `unknown hook "kprobes"`},
		{`  attachTo: []`, "attachTo is an empty list"},
		{`  attachTo: ["["]`, `attachTo: bad pattern "["`},
		{`  attachto: ["x"]`, `did you mean "attachTo"`},
	} {
		_, err := Parse([]byte("apiVersion: bpfmount.io/v1alpha1\nkind: NodePolicy\nrules:\n- name: a\n  namespaces: [x]\n  images: [\"r/*\"]\n" + c.conds + "\n"))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.conds, err, c.want)
		}
	}
}
