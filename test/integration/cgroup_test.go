package integration

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/uuid"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/internal/cgrouppath"
	"github.com/bpfmount/bpfmount/internal/testenv"
)

// cgroupEnv is a daemon whose cgroup root is a cgroup2 mount the test
// made, with kubelet's cgroup root a fresh directory in it (so nothing of
// the host's pods is in the way), and a policy granting the cgroup hooks
// to namespace team-a.
type cgroupEnv struct {
	d           *testenv.Daemon
	opts        testenv.DaemonOptions
	mount       string
	kubeletRoot string
	img, dir    string
}

func newCgroupEnv(t *testing.T) *cgroupEnv {
	t.Helper()
	testenv.RequireRoot(t)
	e := &cgroupEnv{mount: testenv.Cgroup2(t), kubeletRoot: "/" + testenv.RandomName("bpfmount-kubelet-")}
	testenv.MakeCgroup(t, filepath.Join(e.mount, e.kubeletRoot))
	e.img = testenv.Layout(t, testenv.CgroupObject, "v1")
	layoutDir := strings.TrimSuffix(strings.TrimPrefix(e.img, "oci:"), ":v1")
	pol, err := policy.Parse([]byte(`apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: own-traffic
  namespaces: ["team-a"]
  images: ["oci:` + filepath.Dir(layoutDir) + `/*"]
  hooks: ["cgroup_skb", "cgroup_sock_addr", "sock_ops"]
`))
	if err != nil {
		t.Fatal(err)
	}
	e.opts = testenv.DaemonOptions{Configure: func(o *driver.Options) {
		o.Policy = policy.Static(pol)
		o.CgroupRoot, o.KubeletCgroupRoot = e.mount, e.kubeletRoot
	}}
	e.d = testenv.StartDaemon(t, e.opts)
	e.dir = testenv.ShortTempDir(t)
	return e
}

func cgroupPodAttrs(img, uid string, kv ...string) map[string]string {
	a := podAttrs(img, "", "team-a")
	delete(a, "interface")
	a["csi.storage.k8s.io/pod.uid"] = uid
	for i := 0; i < len(kv); i += 2 {
		a[kv[i]] = kv[i+1]
	}
	return a
}

func listeners(t *testing.T) (udp net.PacketConn, tcp net.Listener) {
	t.Helper()
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	tcp, err = net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcp.Close() })
	return udp, tcp
}

// A pod's cgroup programs, for both cgroup drivers: cgroup_skb egress
// counts what a process in the pod sends, cgroup_sock_addr connect4
// refuses its connects, sock_ops sees its TCP connects; a daemon restart
// keeps them attached; unpublish detaches them and leaves nothing.
func TestPodCgroupHooks(t *testing.T) {
	e := newCgroupEnv(t)
	udp, tcp := listeners(t)
	ctx := context.Background()
	for _, tc := range []struct {
		driver cgrouppath.Driver
		qos    cgrouppath.QoS
	}{{cgrouppath.Cgroupfs, cgrouppath.Burstable}, {cgrouppath.Systemd, cgrouppath.BestEffort}, {cgrouppath.Systemd, cgrouppath.Guaranteed}} {
		t.Run(string(tc.driver)+"/"+string(tc.qos), func(t *testing.T) {
			uid := uuid.NewString()
			pod, container := testenv.PodCgroup(t, e.mount, cgrouppath.PodPath(tc.driver, tc.qos, e.kubeletRoot, uid))
			skbT, connT, opsT := filepath.Join(e.dir, "skb-"+uid), filepath.Join(e.dir, "conn-"+uid), filepath.Join(e.dir, "ops-"+uid)

			if _, err := e.d.Node.NodePublishVolume(ctx, publishReq("skb-"+uid, skbT, cgroupPodAttrs(e.img, uid, "program", "count_skb", "type", "cgroup_skb", "direction", "egress"), true)); err != nil {
				t.Fatal(err)
			}
			rec, err := e.d.Record("skb-" + uid)
			if err != nil || rec.Identity.Cgroup != pod || rec.Identity.Interface != "" {
				t.Fatalf("record %+v %v, want cgroup %s", rec, err, pod)
			}
			if out, rc := testenv.RunInCgroup(t, container, "udp-send", udp.LocalAddr().String()); rc != 0 {
				t.Fatalf("udp-send: %d %s", rc, out)
			}
			if n := testenv.MapCounter(t, filepath.Join(skbT, "hits")); n < 10 {
				t.Fatalf("counted %d packets sent from the pod, want at least 10", n)
			}

			if out, rc := testenv.RunInCgroup(t, container, "connect", tcp.Addr().String()); rc != 0 {
				t.Fatalf("connect before the program: %d %s", rc, out)
			}
			if _, err := e.d.Node.NodePublishVolume(ctx, publishReq("conn-"+uid, connT, cgroupPodAttrs(e.img, uid, "program", "deny_connect", "type", "cgroup_sock_addr", "attachTo", "connect4"), true)); err != nil {
				t.Fatal(err)
			}
			if out, rc := testenv.RunInCgroup(t, container, "connect", tcp.Addr().String()); rc != testenv.HelperDenied {
				t.Fatalf("connect from the pod: exit %d (%s), want EPERM", rc, out)
			}
			if _, err := e.d.Node.NodePublishVolume(ctx, publishReq("ops-"+uid, opsT, cgroupPodAttrs(e.img, uid, "program", "count_sockops", "type", "sock_ops"), true)); err != nil {
				t.Fatal(err)
			}

			// A restart adopts the pinned links: still attached, still working.
			e.d.Restart(e.opts)
			if _, rc := testenv.RunInCgroup(t, container, "connect", tcp.Addr().String()); rc != testenv.HelperDenied {
				t.Fatalf("connect after restart: exit %d, want EPERM", rc)
			}
			// Unpublishing the connect4 program lets connects (and UDP's
			// connect) through again.
			if _, err := e.d.Node.NodeUnpublishVolume(ctx, unpublishReq("conn-"+uid, connT)); err != nil {
				t.Fatal(err)
			}
			before := testenv.MapCounter(t, filepath.Join(skbT, "hits"))
			if out, rc := testenv.RunInCgroup(t, container, "udp-send", udp.LocalAddr().String()); rc != 0 {
				t.Fatalf("udp-send after restart: %d %s", rc, out)
			}
			if n := testenv.MapCounter(t, filepath.Join(skbT, "hits")); n < before+10 {
				t.Fatalf("after the restart counted %d more packets, want 10", n-before)
			}
			if out, rc := testenv.RunInCgroup(t, container, "connect", tcp.Addr().String()); rc != 0 {
				t.Fatalf("connect after unpublish: %d %s", rc, out)
			}
			if n := testenv.MapCounter(t, filepath.Join(opsT, "hits")); n == 0 {
				t.Fatal("sock_ops did not run on the pod's TCP connect")
			}
			for _, v := range []struct{ id, target string }{{"skb-" + uid, skbT}, {"ops-" + uid, opsT}} {
				if _, err := e.d.Node.NodeUnpublishVolume(ctx, unpublishReq(v.id, v.target)); err != nil {
					t.Fatal(err)
				}
			}
			e.d.AssertClean(t, nil, skbT, connT, opsT)
			for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInetEgress, ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupSockOps} {
				if n := testenv.CgroupPrograms(t, pod, at); n != 0 {
					t.Errorf("%d %s programs left on the pod's cgroup", n, at)
				}
			}
		})
	}
}

// Bad input fails with the right code and leaves nothing behind.
func TestPodCgroupBadInput(t *testing.T) {
	e := newCgroupEnv(t)
	uid := uuid.NewString()
	testenv.PodCgroup(t, e.mount, cgrouppath.PodPath(cgrouppath.Cgroupfs, cgrouppath.Burstable, e.kubeletRoot, uid))
	target := filepath.Join(e.dir, "vol")
	skb := []string{"program", "count_skb", "type", "cgroup_skb", "direction", "egress"}

	expectCode(t, e.d, publishReq("v1", target, cgroupPodAttrs(e.img, uid, append(skb, "interface", "lo")...), true), codes.InvalidArgument, `"interface" does not apply to type cgroup_skb`)
	expectCode(t, e.d, publishReq("v2", target, cgroupPodAttrs(e.img, "pod-1", skb...), true), codes.InvalidArgument, "is not a UUID")
	expectCode(t, e.d, publishReq("v3", target, cgroupPodAttrs(e.img, uid, append(skb, "cgroup", filepath.Join(e.mount, e.kubeletRoot))...), true), codes.InvalidArgument, `"cgroup" is for local requests only`)
	other := uuid.NewString()
	_, err := e.d.Node.NodePublishVolume(context.Background(), publishReq("v4", target, cgroupPodAttrs(e.img, other, skb...), true))
	wantStatus(t, err, codes.FailedPrecondition, other)
	for _, p := range []string{
		filepath.Join(e.mount, cgrouppath.PodPath(cgrouppath.Cgroupfs, cgrouppath.BestEffort, e.kubeletRoot, other)),
		filepath.Join(e.mount, cgrouppath.PodPath(cgrouppath.Systemd, cgrouppath.Guaranteed, e.kubeletRoot, other)),
	} {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("the error does not name %s: %v", p, err)
		}
	}
	// A program of another type on the pod's cgroup: the loader refuses it.
	expectCode(t, e.d, publishReq("v5", target, cgroupPodAttrs(e.img, uid, "program", "count_skb", "type", "sock_ops"), true), codes.InvalidArgument, "cannot attach")
	e.d.AssertClean(t, nil, target)
}

// A local request names its cgroup: an absolute path in the cgroup2
// hierarchy reached with no symbolic link.
func TestLocalCgroup(t *testing.T) {
	e := newCgroupEnv(t)
	_, tcp := listeners(t)
	cg := filepath.Join(e.mount, e.kubeletRoot, "local")
	testenv.MakeCgroup(t, cg)
	target := filepath.Join(e.dir, "vol")
	local := func(cgroup string) map[string]string {
		return map[string]string{"image": e.img, "program": "count_sockops", "type": "sock_ops", "cgroup": cgroup}
	}
	link := filepath.Join(e.dir, "link")
	if err := os.Symlink(cg, link); err != nil {
		t.Fatal(err)
	}
	expectCode(t, e.d, publishReq("v1", target, local(link), false), codes.InvalidArgument, "not under the cgroup2 hierarchy")
	expectCode(t, e.d, publishReq("v1", target, local(e.dir), false), codes.InvalidArgument, "not under the cgroup2 hierarchy")
	expectCode(t, e.d, publishReq("v1", target, local(cg+"/none"), false), codes.FailedPrecondition, "does not exist")
	e.d.AssertClean(t, nil, target)

	if _, err := e.d.Node.NodePublishVolume(context.Background(), publishReq("v1", target, local(cg), false)); err != nil {
		t.Fatal(err)
	}
	if out, rc := testenv.RunInCgroup(t, cg, "connect", tcp.Addr().String()); rc != 0 {
		t.Fatalf("connect: %d %s", rc, out)
	}
	if n := testenv.MapCounter(t, filepath.Join(target, "hits")); n == 0 {
		t.Fatal("sock_ops did not run")
	}
	if _, err := e.d.Node.NodeUnpublishVolume(context.Background(), unpublishReq("v1", target)); err != nil {
		t.Fatal(err)
	}
	e.d.AssertClean(t, nil, target)
}

// On a hybrid node the cgroup root is a tmpfs of v1 hierarchies with
// cgroup2 at unified/: the pod's cgroup is found there. Without unified/
// (a v1-only node) the volume fails with FailedPrecondition saying so.
func TestHybridCgroupRoot(t *testing.T) {
	e := newCgroupEnv(t)
	root := filepath.Join(t.TempDir(), "cgroup")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.MountTmpfs(t, root)
	uid := uuid.NewString()
	attrs := cgroupPodAttrs(e.img, uid, "program", "count_sockops", "type", "sock_ops")
	target := filepath.Join(e.dir, "vol")
	opts := testenv.DaemonOptions{Configure: func(o *driver.Options) {
		e.opts.Configure(o)
		o.CgroupRoot = root
	}}
	e.d.Restart(opts)
	expectCode(t, e.d, publishReq("v1", target, attrs, true), codes.FailedPrecondition, "cgroup2")

	unified := filepath.Join(root, "unified")
	if err := os.Mkdir(unified, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("none", unified, "cgroup2", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(unified, unix.MNT_DETACH) })
	pod, _ := testenv.PodCgroup(t, unified, cgrouppath.PodPath(cgrouppath.Systemd, cgrouppath.Burstable, e.kubeletRoot, uid))
	if _, err := e.d.Node.NodePublishVolume(context.Background(), publishReq("v1", target, attrs, true)); err != nil {
		t.Fatal(err)
	}
	if rec, _ := e.d.Record("v1"); rec == nil || rec.Identity.Cgroup != pod {
		t.Fatalf("record %+v, want cgroup %s", rec, pod)
	}
	if _, err := e.d.Node.NodeUnpublishVolume(context.Background(), unpublishReq("v1", target)); err != nil {
		t.Fatal(err)
	}
	e.d.AssertClean(t, nil, target)
}

func wantStatus(t *testing.T, err error, code codes.Code, fragment string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), fragment) {
		t.Fatalf("got %v, want code %s mentioning %q", err, code, fragment)
	}
}
