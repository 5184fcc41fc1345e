package loader_test

import (
	"encoding/binary"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

func hits(t *testing.T, p *loader.Program) uint64 {
	t.Helper()
	var v [8]byte
	if err := p.Maps["hits"].Lookup(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	return binary.NativeEndian.Uint64(v[:])
}

// cgroupPrograms lists the programs of the kind attached to a cgroup.
func cgroupPrograms(t *testing.T, dir string, at ebpf.AttachType) int {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
	if err != nil {
		t.Fatal(err)
	}
	return len(res.Programs)
}

// TestCgroupHooksOnKernel attaches each cgroup hook to a cgroup of its
// own, runs a process in it and sees the program's effect; a restart
// adopts the pinned link, which keeps working, and release detaches.
func TestCgroupHooksOnKernel(t *testing.T) {
	testenv.RequireRoot(t)
	cg := filepath.Join(testenv.Cgroup2(t), testenv.RandomName("bpfmount-test-"))
	testenv.MakeCgroup(t, cg)
	root := filepath.Join(testenv.BPFFS(t), "bpfmount")
	l := openLoader(t, root)
	defer func() { l.Close() }()
	img := testenv.Layout(t, testenv.CgroupObject, "v1")
	acquire := func(req loader.Request) *loader.Program {
		t.Helper()
		req.Image = bytecode.Request{Reference: img}
		req.Cgroup = cg
		r, err := l.Resolve(testenv.Ctx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		p, err := l.Acquire(testenv.Ctx(t), r, "vol-"+req.Program)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	tcp, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()

	t.Run("cgroup_skb egress counts what the process sends", func(t *testing.T) {
		p := acquire(loader.Request{Program: "count_skb", Hook: loader.HookCgroupSKB, Direction: loader.Egress})
		if out, rc := testenv.RunInCgroup(t, cg, "udp-send", udp.LocalAddr().String()); rc != 0 {
			t.Fatalf("udp-send: %d %s", rc, out)
		}
		if n := hits(t, p); n < 10 {
			t.Fatalf("counted %d packets, want at least 10", n)
		}
		// Restart: a new loader adopts the pinned link.
		l.Close()
		l = openLoader(t, root)
		ap, err := l.Adopt(p.Identity, "vol-count_skb")
		if err != nil || !ap.Attached {
			t.Fatalf("adopt: %+v %v", ap, err)
		}
		before := hits(t, ap)
		if out, rc := testenv.RunInCgroup(t, cg, "udp-send", udp.LocalAddr().String()); rc != 0 {
			t.Fatalf("udp-send: %d %s", rc, out)
		}
		if n := hits(t, ap); n < before+10 {
			t.Fatalf("after the restart counted %d more packets, want at least 10", n-before)
		}
		if err := l.Release(ap.Key, "vol-count_skb"); err != nil {
			t.Fatal(err)
		}
		if n := cgroupPrograms(t, cg, ebpf.AttachCGroupInetEgress); n != 0 {
			t.Fatalf("%d egress programs left on the cgroup", n)
		}
		if _, err := os.Stat(filepath.Join(root, "programs", ap.Key)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("pins left: %v", err)
		}
	})

	t.Run("cgroup_sock_addr connect4 refuses a connect", func(t *testing.T) {
		if out, rc := testenv.RunInCgroup(t, cg, "connect", tcp.Addr().String()); rc != 0 {
			t.Fatalf("connect before attach: %d %s", rc, out)
		}
		p := acquire(loader.Request{Program: "deny_connect", Hook: loader.HookCgroupSockAddr, AttachTo: "connect4"})
		out, rc := testenv.RunInCgroup(t, cg, "connect", tcp.Addr().String())
		if rc != testenv.HelperDenied {
			t.Fatalf("connect with the program: exit %d (%s), want EPERM", rc, out)
		}
		if hits(t, p) == 0 {
			t.Fatal("the program did not count the connect")
		}
		// A process outside the cgroup (this test) is not affected.
		c, err := net.Dial("tcp4", tcp.Addr().String())
		if err != nil {
			t.Fatalf("connect outside the cgroup: %v", err)
		}
		c.Close()
		if err := l.Release(p.Key, "vol-deny_connect"); err != nil {
			t.Fatal(err)
		}
		if out, rc := testenv.RunInCgroup(t, cg, "connect", tcp.Addr().String()); rc != 0 {
			t.Fatalf("connect after release: %d %s", rc, out)
		}
	})

	t.Run("sock_ops fires on a TCP connect", func(t *testing.T) {
		p := acquire(loader.Request{Program: "count_sockops", Hook: loader.HookSockOps})
		if out, rc := testenv.RunInCgroup(t, cg, "connect", tcp.Addr().String()); rc != 0 {
			t.Fatalf("connect: %d %s", rc, out)
		}
		if hits(t, p) == 0 {
			t.Fatal("sock_ops did not run on the connect")
		}
		if n := cgroupPrograms(t, cg, ebpf.AttachCGroupSockOps); n != 1 {
			t.Fatalf("%d sock_ops programs on the cgroup, want 1", n)
		}
		if err := l.Release(p.Key, "vol-count_sockops"); err != nil {
			t.Fatal(err)
		}
		if n := cgroupPrograms(t, cg, ebpf.AttachCGroupSockOps); n != 0 {
			t.Fatalf("%d sock_ops programs left", n)
		}
	})

	t.Run("a cgroup that is gone fails with nothing left", func(t *testing.T) {
		gone := filepath.Join(filepath.Dir(cg), testenv.RandomName("bpfmount-gone-"))
		r, err := l.Resolve(testenv.Ctx(t), loader.Request{Image: bytecode.Request{Reference: img}, Program: "count_sockops", Hook: loader.HookSockOps, Cgroup: gone})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Acquire(testenv.Ctx(t), r, "vol-gone"); err == nil {
			t.Fatal("attached to a missing cgroup")
		}
		if _, err := os.Stat(filepath.Join(root, "programs", r.Identity.Key())); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("pins left: %v", err)
		}
		var st unix.Statfs_t
		if unix.Statfs(gone, &st) == nil {
			t.Fatal("the cgroup appeared")
		}
	})
}
