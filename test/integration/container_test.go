package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/test/programs"
)

// containerEnv is a sandboxEnv whose "containers" are processes the test
// starts, each chrooted into a root directory of its own, in a mount
// namespace and a cgroup2 cgroup of its own, and whose policy grants
// uprobes in its pods' containers only.
type containerEnv struct {
	sandboxEnv
	// server is the static probe server's source binary on the host.
	server string
	// cgroups is a cgroup2 mount where the containers' cgroups are made.
	cgroups string
}

func newContainerEnv(t *testing.T) *containerEnv {
	t.Helper()
	e := &containerEnv{sandboxEnv: newSandboxEnv(t, testenv.TraceCountObject, "own-containers", `  hooks: ["uprobe", "uretprobe"]
  attachTo: ["container:*:/bin/*"]
`)}
	e.server = testenv.BuildProbeServer(t)
	e.cgroups = testenv.Cgroup2(t)
	return e
}

func (e *containerEnv) cgroup(name string) string {
	return filepath.Join(e.cgroups, "bpfmount-test-"+testenv.RandomName(name))
}

func containerAttrs(img, uid, typ, container, attachTo string) map[string]string {
	a := podAttrs(img, "", "team-a")
	delete(a, "interface")
	a["csi.storage.k8s.io/pod.uid"] = uid
	a["type"], a["attachTo"], a["container"], a["program"] = typ, attachTo, container, "count_"+typ
	return a
}

// A uprobe in a pod's container on the real kernel: published before the
// container runs (waiting), attached to the binary inside the container's
// root once it runs, counting the calls of every process of the container
// exactly (its main process and its children) and nobody else's (the same
// file run on the host or in another cgroup is not counted); the
// container is replaced by a new process with a new root and cgroup and
// the probe follows it; a daemon restart
// keeps one attachment; the container stops (detached, said in the
// status); unpublish leaves nothing, the program gone from the kernel.
func TestContainerUprobe(t *testing.T) {
	e := newContainerEnv(t)
	ctx := context.Background()
	uid := uuid.NewString()
	target := filepath.Join(e.dir, "vol")
	attachTo := "/bin/server:" + testenv.ProbeTargetSymbol
	if _, err := e.d.Node.NodePublishVolume(ctx, publishReq("ct-1", target, containerAttrs(e.img, uid, "uprobe", "app", attachTo), true)); err != nil {
		t.Fatal(err)
	}
	rec, err := e.d.Record("ct-1")
	if err != nil || rec.Identity.Pod != uid || rec.Identity.Container != "app" || rec.Identity.AttachTo != attachTo {
		t.Fatalf("record %+v %v", rec, err)
	}
	if s := volumeStatus(t, target); s["state"] != "waiting" || s["container"] != "app" {
		t.Fatalf("before the container runs: %v", s)
	}
	e.rt.RunSandbox(uid, "sb-1", "/proc/1/ns/net")
	first := testenv.StartContainer(t, e.server, e.cgroup("c1"))
	first.Call(t, 5)
	first.Call(t, -5)
	if n := slotCount(t, target, programs.SlotUprobe); n != 0 {
		t.Fatalf("counted %d calls before the container was found", n)
	}
	e.rt.RunContainer(uid, "sb-1", "app", "c-1", first.PID())
	s := waitStatus(t, target, func(s map[string]string) bool { return s["state"] == "attached" })
	if s["containerID"] != "c-1" || s["pid"] != fmt.Sprint(first.PID()) {
		t.Fatalf("attached: %v", s)
	}
	first.Call(t, 7)
	if n := slotCount(t, target, programs.SlotUprobe); n != 7 {
		t.Fatalf("counted %d calls in the container, want 7", n)
	}
	// Every process of the container counts: a child of its main
	// process, and another child started later.
	first.Call(t, -6)
	if n := slotCount(t, target, programs.SlotUprobe); n != 13 {
		t.Fatalf("counted %d calls with a child of the container's process, want 7+6", n)
	}
	first.Call(t, -2)
	if n := slotCount(t, target, programs.SlotUprobe); n != 15 {
		t.Fatalf("counted %d calls with a second child, want 7+6+2", n)
	}
	// The same file run by processes that are not the container's (on
	// the host, and in another cgroup): not counted.
	same := filepath.Join(first.Root, "bin", "server")
	testenv.RunBinary(t, same, "", "9\n-4\n")
	testenv.RunBinary(t, same, e.cgroup("other"), "8\n-3\n")
	if n := slotCount(t, target, programs.SlotUprobe); n != 15 {
		t.Fatalf("counted %d calls, want the container's 15 only", n)
	}

	// The container restarts: a new process in a new root and a new
	// cgroup.
	second := testenv.StartContainer(t, e.server, e.cgroup("c2"))
	first.Stop()
	e.rt.ExitContainer("c-1")
	e.rt.RunContainer(uid, "sb-1", "app", "c-2", second.PID())
	waitStatus(t, target, func(s map[string]string) bool {
		return s["state"] == "attached" && s["containerID"] == "c-2" && s["pid"] == fmt.Sprint(second.PID())
	})
	second.Call(t, 4)
	second.Call(t, -1)
	if n := slotCount(t, target, programs.SlotUprobe); n != 20 {
		t.Fatalf("after the restart counted %d calls, want 15+4+1", n)
	}

	// A daemon restart adopts the attachment: still counted, once.
	e.d.Restart(e.opts)
	waitStatus(t, target, func(s map[string]string) bool { return s["state"] == "attached" && s["containerID"] == "c-2" })
	second.Call(t, 3)
	second.Call(t, -2)
	if n := slotCount(t, target, programs.SlotUprobe); n != 25 {
		t.Fatalf("after a daemon restart counted %d calls, want 20+3+2", n)
	}

	// The container stops: detached, and the status says so.
	second.Stop()
	e.rt.ExitContainer("c-2")
	waitStatus(t, target, func(s map[string]string) bool {
		return s["state"] == "waiting" && strings.Contains(s["reason"], "detached")
	})
	for _, pin := range []string{"link", "filter-program", "filter-cgroup"} {
		if _, err := os.Lstat(filepath.Join(e.d.BPFFSRoot, "programs", rec.Key, pin)); err == nil {
			t.Errorf("the %s pin of a stopped container stays", pin)
		}
	}

	if _, err := e.d.Node.NodeUnpublishVolume(ctx, unpublishReq("ct-1", target)); err != nil {
		t.Fatal(err)
	}
	e.d.AssertClean(t, nil, target)
	if p, err := ebpf.NewProgramFromID(ebpf.ProgramID(rec.ProgramID)); err == nil {
		p.Close()
		t.Errorf("program %d is still loaded after unpublish", rec.ProgramID)
	}
}

// The path is resolved inside the container's root: a symbolic link there
// that points at a host binary (absolute, or with "..") does not lead out
// of it; the status and an attempt that attaches nothing say so; unpublish
// leaves nothing. Bad requests are refused at publish and leave nothing.
func TestContainerUprobeStaysInRoot(t *testing.T) {
	e := newContainerEnv(t)
	ctx := context.Background()
	uid := uuid.NewString()
	c := testenv.StartContainer(t, e.server, e.cgroup("c"))
	host := filepath.Join(c.Root, "bin", "server") // the host's path of a binary
	for _, l := range []struct{ name, to string }{
		{"abs", host},
		{"up", "../../../../../../../../.." + host},
	} {
		if err := os.Symlink(l.to, filepath.Join(c.Root, "bin", l.name)); err != nil {
			t.Fatal(err)
		}
	}
	e.rt.RunSandbox(uid, "sb-1", "/proc/1/ns/net")
	e.rt.RunContainer(uid, "sb-1", "app", "c-1", c.PID())
	for i, name := range []string{"abs", "up"} {
		target := filepath.Join(e.dir, name)
		vol := fmt.Sprintf("esc-%d", i)
		if _, err := e.d.Node.NodePublishVolume(ctx, publishReq(vol, target, containerAttrs(e.img, uid, "uprobe", "app", "/bin/"+name+":"+testenv.ProbeTargetSymbol), true)); err != nil {
			t.Fatal(err)
		}
		s := waitStatus(t, target, func(s map[string]string) bool { return s["state"] == "failed" })
		if !strings.Contains(s["reason"], "not found in the container") {
			t.Errorf("%s: status %v", name, s)
		}
		rec, err := e.d.Record(vol)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(filepath.Join(e.d.BPFFSRoot, "programs", rec.Key, "link")); err == nil {
			t.Errorf("%s: a link was pinned for a path leading out of the container", name)
		}
		if _, err := e.d.Node.NodeUnpublishVolume(ctx, unpublishReq(vol, target)); err != nil {
			t.Fatal(err)
		}
		e.d.AssertClean(t, nil, target)
	}

	for _, tc := range []struct {
		name  string
		attrs map[string]string
		want  string
	}{
		{"tracepoint", containerAttrs(e.img, uid, "tracepoint", "app", "sched/sched_process_exec"), "applies to types uprobe and uretprobe"},
		{"bad name", containerAttrs(e.img, uid, "uprobe", "App_1", "/bin/server:main"), "not a container name"},
		{"dotdot", containerAttrs(e.img, uid, "uprobe", "app", "/bin/../../server:main"), "absolute path without"},
	} {
		target := filepath.Join(e.dir, "bad")
		expectCode(t, e.d, publishReq("bad", target, tc.attrs, true), codes.InvalidArgument, tc.want)
		e.d.AssertClean(t, nil, target)
	}
}
