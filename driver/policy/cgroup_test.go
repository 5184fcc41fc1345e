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
