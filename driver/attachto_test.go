package driver

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/internal/cgrouppath"
	"github.com/bpfmount/bpfmount/loader"
)

// One attachTo serves tracing targets and cgroup_sock_addr operations; the
// policy's attachTo patterns restrict both, also an operation that only
// the program's section names (the driver decides again once it is known).
func TestSockAddrOperationFromSectionIsDecided(t *testing.T) {
	unified, err := cgrouppath.Unified(cgrouppath.DefaultRoot)
	if err != nil {
		t.Skipf("skipping: no cgroup2 on this host: %v", err)
	}
	pol := mustPolicy(t, `local:
  hooks: ["cgroup_sock_addr", "tracepoint"]
  attachTo: ["connect4", "syscalls/*"]
`)
	attrs := map[string]string{AttrImage: "registry.example/bpf/counter:v1", AttrType: "cgroup_sock_addr", AttrCgroup: unified}

	f := newTestDriver(t, pol)
	f.loader.imageAttachTo = "bind4"
	_, err = f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, attrs))
	wantCode(t, err, codes.PermissionDenied, `allows attachTo ["connect4", "syscalls/*"] only`)
	f.assertNothingLeft(t)

	f = newTestDriver(t, pol)
	f.loader.imageAttachTo = "connect4"
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, attrs)); err != nil {
		t.Fatalf("operation the patterns allow: %v", err)
	}
	for _, rec := range f.store.records {
		if rec.Identity.AttachTo != "connect4" || rec.Identity.Cgroup != unified {
			t.Fatalf("recorded identity %+v", rec.Identity)
		}
	}

	// The volume names the operation: decided before anything is fetched.
	f = newTestDriver(t, pol)
	attrs[AttrAttachTo] = "sendmsg4"
	_, err = f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, attrs))
	wantCode(t, err, codes.PermissionDenied, "allows attachTo")
	if f.loader.resolves != 0 {
		t.Fatalf("%d fetches before the denial", f.loader.resolves)
	}
	f.assertNothingLeft(t)
}

// A pod's tracing request without type (attachTo no socket operation) is
// not for its cgroup: the driver does not look for one.
func TestPodTracingRequestNeedsNoCgroup(t *testing.T) {
	f := newTestDriver(t, mustPolicy(t, `rules:
- name: observe
  namespaces: ["team-a"]
  images: ["registry.example/bpf/*"]
  hooks: ["tracepoint"]
  attachTo: ["sched/*"]
`))
	f.d.opts.CgroupRoot = t.TempDir() // would fail with FailedPrecondition if looked at
	f.loader.imageHook = loader.HookTracepoint
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, cgroupPodAttrs(AttrAttachTo, "sched/sched_switch"))); err != nil {
		t.Fatal(err)
	}
	for _, rec := range f.store.records {
		if rec.Identity.Hook != loader.HookTracepoint || rec.Identity.Cgroup != "" || rec.Identity.AttachTo != "sched/sched_switch" {
			t.Fatalf("recorded identity %+v", rec.Identity)
		}
	}
	// Its target outside the patterns is denied before the fetch.
	_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-2", testTarget+"2", cgroupPodAttrs(AttrAttachTo, "syscalls/sys_enter_execve")))
	wantCode(t, err, codes.PermissionDenied, "allows attachTo")
}

func TestParseTargetKinds(t *testing.T) {
	for _, tc := range []struct {
		attrs     map[string]string
		podCgroup bool
	}{
		{cgroupPodAttrs(AttrAttachTo, "sched/sched_switch"), false},                 // tracing, type from the image
		{cgroupPodAttrs(AttrAttachTo, "connect4"), true},                            // cgroup_sock_addr, type from the image
		{cgroupPodAttrs(AttrType, "kprobe", AttrAttachTo, "tcp_connect"), false},    // tracing
		{cgroupPodAttrs(AttrType, "cgroup_sock_addr", AttrAttachTo, "bind6"), true}, // the pod's cgroup
		{cgroupPodAttrs(AttrType, "cgroup_sock_addr"), true},                        // operation from the section
	} {
		vr, err := parseAttributes(tc.attrs)
		if err != nil {
			t.Errorf("%v: %v", tc.attrs, err)
			continue
		}
		if vr.podCgroup != tc.podCgroup || vr.load.AttachTo != tc.attrs[AttrAttachTo] || vr.load.Interface != "" || vr.load.Cgroup != "" {
			t.Errorf("%v: parsed %+v (pod cgroup %v)", tc.attrs, vr.load, vr.podCgroup)
		}
	}
}
