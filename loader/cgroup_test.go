package loader

import (
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

func cgroupImage(t *testing.T) (*bytecode.Image, *ebpf.CollectionSpec) {
	t.Helper()
	obj, err := os.ReadFile("../test/programs/cgrouphooks_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	return objectImage(t, obj, "oci:/x")
}

func TestResolveCgroupHooks(t *testing.T) {
	img, spec := cgroupImage(t)
	const cg = "/sys/fs/cgroup/kubepods/pod1"
	for _, tc := range []struct {
		name   string
		req    Request
		want   Hook
		attach ebpf.AttachType
		err    string
	}{
		{name: "skb egress", req: Request{Program: "count_skb", Cgroup: cg, Direction: Egress}, want: HookCgroupSKB, attach: ebpf.AttachCGroupInetEgress},
		{name: "skb ingress overrides the section", req: Request{Program: "count_skb", Cgroup: cg, Direction: Ingress}, want: HookCgroupSKB, attach: ebpf.AttachCGroupInetIngress},
		{name: "sock_addr from the section", req: Request{Program: "deny_connect", Cgroup: cg}, want: HookCgroupSockAddr, attach: ebpf.AttachCGroupInet4Connect},
		{name: "sock_addr named", req: Request{Program: "deny_connect", Cgroup: cg, AttachTo: "sendmsg6"}, want: HookCgroupSockAddr, attach: ebpf.AttachCGroupUDP6Sendmsg},
		{name: "sock_ops", req: Request{Program: "count_sockops", Cgroup: cg}, want: HookSockOps, attach: ebpf.AttachCGroupSockOps},
		{name: "skb without direction", req: Request{Program: "count_skb", Cgroup: cg}, err: "direction"},
		{name: "interface on a cgroup hook", req: Request{Program: "count_skb", Cgroup: cg, Direction: Egress, Interface: "eth0"}, err: "not an interface"},
		{name: "no cgroup", req: Request{Program: "count_sockops"}, err: "absolute, clean path"},
		{name: "relative cgroup", req: Request{Program: "count_sockops", Cgroup: "kubepods/x"}, err: "absolute, clean path"},
		{name: "unclean cgroup", req: Request{Program: "count_sockops", Cgroup: "/sys/fs/cgroup/../etc"}, err: "absolute, clean path"},
		{name: "bad attachTo", req: Request{Program: "deny_connect", Cgroup: cg, AttachTo: "listen"}, err: "attachTo"},
		{name: "attachTo on skb", req: Request{Program: "count_skb", Cgroup: cg, Direction: Egress, AttachTo: "connect4"}, err: "attachTo"},
		{name: "wrong program type", req: Request{Program: "count_skb", Hook: HookSockOps, Cgroup: cg}, err: "cannot attach"},
		{name: "cgroup on a network hook", req: Request{Program: "count_skb", Hook: HookTCX, Direction: Egress, Interface: "eth0", Cgroup: cg}, err: "cannot attach"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := resolve(tc.req, img, spec)
			if tc.err != "" {
				if fault.Of(err) != fault.Invalid || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an Invalid error about %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.Hook != tc.want || id.Cgroup != cg {
				t.Fatalf("identity %+v", id)
			}
			if got := cgroupAttachType(id); got != tc.attach {
				t.Fatalf("attach type %s, want %s", got, tc.attach)
			}
			cs, err := collectionFor(id, spec)
			if err != nil {
				t.Fatal(err)
			}
			if got := cs.Programs[id.Program].AttachType; got != tc.attach {
				t.Fatalf("expected attach type %s, want %s", got, tc.attach)
			}
		})
	}
}

// A network hook refuses the cgroup keys, even when the program type fits.
func TestNetworkHookRefusesCgroupKeys(t *testing.T) {
	obj, err := os.ReadFile("../test/programs/tcxorder_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	spec, err := parseSpec(obj)
	if err != nil {
		t.Fatal(err)
	}
	img := &bytecode.Image{Reference: "oci:/x", Digest: "sha256:00", Object: obj, Programs: map[string]string{"tcx_order": "tcx"}}
	for _, req := range []Request{
		{Interface: "eth0", Direction: Egress, Cgroup: "/sys/fs/cgroup/x"},
		{Interface: "eth0", Direction: Egress, AttachTo: "connect4"},
	} {
		if _, err := resolve(req, img, spec); fault.Of(err) != fault.Invalid {
			t.Errorf("%+v: got %v", req, err)
		}
	}
}

// Each pod's cgroup is its own attachment: the cgroup is in the identity.
func TestIdentityKeyIncludesCgroup(t *testing.T) {
	a := Identity{Digest: "sha256:00", Program: "p", Hook: HookSockOps, Cgroup: "/sys/fs/cgroup/a", Priority: 1000}
	b := a
	b.Cgroup = "/sys/fs/cgroup/b"
	c := a
	c.Hook, c.AttachTo = HookCgroupSockAddr, "connect4"
	d := c
	d.AttachTo = "connect6"
	if a.Key() == b.Key() || c.Key() == d.Key() {
		t.Fatal("cgroup or attachTo did not change the key")
	}
	if lockName(a) == lockName(b) || lockName(a) == "p" || !strings.HasPrefix(lockName(a), "cgroup:") {
		t.Fatalf("lock names %q %q", lockName(a), lockName(b))
	}
}

// objectImage is an image of one object as resolve sees it: the parsed
// spec and the labels bytecode.Describe derives, with no fetch.
func objectImage(t *testing.T, obj []byte, ref string) (*bytecode.Image, *ebpf.CollectionSpec) {
	t.Helper()
	spec, err := parseSpec(obj)
	if err != nil {
		t.Fatal(err)
	}
	progs, _, err := bytecode.Describe(obj)
	if err != nil {
		t.Fatal(err)
	}
	return &bytecode.Image{Reference: ref, Digest: "sha256:00", Object: obj, Programs: progs}, spec
}
