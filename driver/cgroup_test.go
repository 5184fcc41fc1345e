package driver

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/internal/cgrouppath"
	"github.com/bpfmount/bpfmount/loader"
)

const testUID = "8f3c2a1e-5b6d-4c7e-9f80-1a2b3c4d5e6f"

func cgroupPodAttrs(kv ...string) map[string]string {
	a := podAttrs("team-a")
	delete(a, AttrInterface)
	a[keyPodUID] = testUID
	for i := 0; i < len(kv); i += 2 {
		a[kv[i]] = kv[i+1]
	}
	return a
}

func TestParseCgroupTargets(t *testing.T) {
	vr, err := parseAttributes(cgroupPodAttrs(AttrType, "cgroup_skb", AttrDirection, "egress"))
	if err != nil {
		t.Fatal(err)
	}
	if !vr.podCgroup || vr.load.Interface != "" || vr.load.Cgroup != "" || vr.load.Hook != loader.HookCgroupSKB {
		t.Fatalf("parsed %+v (pod cgroup %v)", vr.load, vr.podCgroup)
	}
	// The type may come from the image: a pod's request with no interface
	// is for its own cgroup.
	if vr, err := parseAttributes(cgroupPodAttrs()); err != nil || !vr.podCgroup {
		t.Fatalf("no type: %+v %v", vr, err)
	}
	vr, err = parseAttributes(map[string]string{AttrImage: "oci:/x:v1", AttrType: "cgroup_sock_addr", AttrAttachTo: "connect6", AttrCgroup: "/sys/fs/cgroup/my.slice"})
	if err != nil || vr.podCgroup || vr.load.Cgroup != "/sys/fs/cgroup/my.slice" || vr.load.AttachTo != "connect6" {
		t.Fatalf("local: %+v %v", vr, err)
	}
	if vr, err := parseAttributes(map[string]string{AttrImage: "oci:/x:v1", AttrInterface: NodeDefault}); err != nil || vr.load.Interface != NodeDefault {
		t.Fatalf("node:default: %+v %v", vr, err)
	}

	local := func(kv ...string) map[string]string {
		m := map[string]string{AttrImage: "oci:/x:v1"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, tc := range []struct {
		attrs    map[string]string
		fragment string
	}{
		{cgroupPodAttrs(AttrType, "cgroup_skb", AttrDirection, "egress", AttrInterface, "eth0"), `"interface" does not apply to type cgroup_skb`},
		{cgroupPodAttrs(AttrType, "sock_ops", AttrCgroup, "/sys/fs/cgroup"), `"cgroup" is for local requests only`},
		{cgroupPodAttrs(AttrCgroup, "/sys/fs/cgroup/x"), `"cgroup" is for local requests only`},
		{cgroupPodAttrs(AttrType, "sock_ops", keyPodUID, "uid-1"), "is not a UUID"},
		{cgroupPodAttrs(AttrType, "sock_ops", keyPodUID, "../../../etc"), "is not a UUID"},
		{cgroupPodAttrs(AttrType, "cgroup_skb"), `"direction" is required for type cgroup_skb`},
		{cgroupPodAttrs(AttrType, "sock_ops", AttrDirection, "egress"), `"direction" applies to`},
		{cgroupPodAttrs(AttrType, "cgroup_sock_addr", AttrAttachTo, "listen"), "not a socket operation"},
		{cgroupPodAttrs(AttrType, "sock_ops", AttrAttachTo, "connect4"), `and cgroup_sock_addr, not sock_ops`},
		{cgroupPodAttrs(AttrType, "cgroup_skb", AttrDirection, "egress", AttrAttachTo, "connect4"), `and cgroup_sock_addr, not cgroup_skb`},
		{cgroupPodAttrs(AttrType, "cgroup_sock_addr", AttrAttachTo, "sched/sched_switch"), "not a socket operation"},
		{cgroupPodAttrs(AttrType, "cgroup_sock_addr", AttrAttachTo, ""), `"attachTo" is empty`},
		{cgroupPodAttrs(AttrType, "tracepoint", AttrAttachTo, "sched/sched_switch", AttrCgroup, "/sys/fs/cgroup/x"), `"cgroup" applies to the cgroup types`},
		{local(AttrType, "kprobe", AttrAttachTo, "tcp_connect", AttrCgroup, "/sys/fs/cgroup/x"), `not to tracing types`},
		{local(AttrAttachTo, "sched/sched_switch", AttrCgroup, "/sys/fs/cgroup/x"), `not to tracing types`},
		{local(AttrAttachTo, "sched/sched_switch", AttrInterface, "eth0"), `names a tracing type's target`},
		{cgroupPodAttrs(AttrType, "sock_ops", AttrXDPMode, "skb"), `"xdpMode" applies to xdp`},
		{cgroupPodAttrs(AttrType, "sock_ops", AttrProceedOn, "pass"), `"proceedOn" applies to xdp and tc`},
		{cgroupPodAttrs(AttrType, "cgroup_skb", AttrDirection, "egress", AttrPriority, "10"), `"priority" does not apply to type cgroup_skb`},
		{local(AttrType, "sock_ops"), `"cgroup" is required for type sock_ops`},
		{local(AttrType, "sock_ops", AttrCgroup, "sys/fs/cgroup"), "absolute, clean path"},
		{local(AttrType, "sock_ops", AttrCgroup, "/sys/fs/cgroup/../../etc"), "absolute, clean path"},
		{local(AttrType, "xdp", AttrCgroup, "/sys/fs/cgroup/x"), `"cgroup" applies to the cgroup types`},
		{local(AttrInterface, "eth0", AttrCgroup, "/sys/fs/cgroup/x"), "exclude each other"},
		{local(AttrInterface, "eth0", AttrAttachTo, "connect4"), `names a socket operation of type cgroup_sock_addr`},
		{local(AttrInterface, "node:other"), "not an interface name"},
	} {
		_, err := parseAttributes(tc.attrs)
		if err == nil || codeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.fragment) {
			t.Errorf("%v: got %v, want InvalidArgument with %q", tc.attrs, err, tc.fragment)
		}
	}
}

const cgroupRule = `rules:
- name: own-traffic
  namespaces: ["team-a"]
  images: ["registry.example/bpf/*"]
  hooks: ["cgroup_skb"]
`

// On a node without cgroup2 where the driver looks, a pod's cgroup
// program fails with FailedPrecondition saying so, before anything is
// fetched, and leaves nothing.
func TestPodCgroupNeedsCgroup2(t *testing.T) {
	f := newTestDriver(t, mustPolicy(t, cgroupRule))
	f.d.opts.CgroupRoot = t.TempDir() // no cgroup2 here, nor at unified/
	_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, cgroupPodAttrs(AttrType, "cgroup_skb", AttrDirection, "egress")))
	wantCode(t, err, codes.FailedPrecondition, "cgroup2")
	if f.loader.resolves != 0 {
		t.Fatalf("%d fetches", f.loader.resolves)
	}
	f.assertNothingLeft(t)
}

// A pod whose cgroup is nowhere kubelet would put it fails with
// FailedPrecondition naming its UID and the paths looked at.
func TestPodCgroupNotFound(t *testing.T) {
	if _, err := cgrouppath.Unified(cgrouppath.DefaultRoot); err != nil {
		t.Skipf("skipping: no cgroup2 on this host: %v", err)
	}
	f := newTestDriver(t, mustPolicy(t, cgroupRule))
	f.d.opts.KubeletCgroupRoot = "/no-such-kubelet-root"
	_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, cgroupPodAttrs(AttrType, "cgroup_skb", AttrDirection, "egress")))
	wantCode(t, err, codes.FailedPrecondition, testUID)
	if !strings.Contains(err.Error(), filepath.Join("no-such-kubelet-root", "kubepods", "burstable", "pod"+testUID)) ||
		!strings.Contains(err.Error(), "no-such-kubelet-root.slice/no-such-kubelet-root-kubepods.slice") {
		t.Fatalf("the error does not name the paths looked at: %v", err)
	}
	f.assertNothingLeft(t)
}

// The policy decides before the driver looks for the pod's cgroup: a rule
// for interfaces grants no cgroup hook.
func TestPodCgroupDeniedFirst(t *testing.T) {
	f := newTestDriver(t, mustPolicy(t, `rules:
- name: node-net
  namespaces: ["team-a"]
  images: ["registry.example/bpf/*"]
`))
	f.d.opts.CgroupRoot = t.TempDir() // would fail with FailedPrecondition if looked at
	_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, cgroupPodAttrs(AttrType, "cgroup_skb", AttrDirection, "egress")))
	wantCode(t, err, codes.PermissionDenied, `not "cgroup_skb"`)
	_, err = f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, cgroupPodAttrs()))
	wantCode(t, err, codes.PermissionDenied, "none of them a cgroup hook")
	f.assertNothingLeft(t)
}
