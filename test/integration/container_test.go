package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/test/programs"
)

// containerEnv is a sandboxEnv whose "containers" are processes the test
// starts, each chrooted into a root directory of its own, in a mount
// namespace of its own, and whose policy grants uprobes in its pods'
// containers only.
type containerEnv struct {
	sandboxEnv
	// server is the static probe server's source binary on the host.
	server string
}

func newContainerEnv(t *testing.T) *containerEnv {
	t.Helper()
	e := &containerEnv{sandboxEnv: newSandboxEnv(t, testenv.TraceCountObject, "own-containers", `  hooks: ["uprobe", "uretprobe"]
  attachTo: ["container:*:/bin/*"]
`)}
	e.server = buildProbeServer(t)
	return e
}

func containerAttrs(img, uid, typ, container, attachTo string) map[string]string {
	a := podAttrs(img, "", "team-a")
	delete(a, "interface")
	a["csi.storage.k8s.io/pod.uid"] = uid
	a["type"], a["attachTo"], a["container"], a["program"] = typ, attachTo, container, "count_"+typ
	return a
}

// buildProbeServer compiles a static C program that calls
// testenv.ProbeTargetSymbol N times for each number N it reads on stdin,
// answering "ok" after each: a container's long-lived main process.
func buildProbeServer(t *testing.T) string {
	t.Helper()
	code := `#include <stdio.h>
__attribute__((noinline)) int ` + testenv.ProbeTargetSymbol + `(int i) { asm volatile("" ::: "memory"); return i + 1; }
int main(void) {
	int n, s = 0;
	setvbuf(stdout, NULL, _IONBF, 0);
	while (scanf("%d", &n) == 1) {
		for (int i = 0; i < n; i++) s += ` + testenv.ProbeTargetSymbol + `(i);
		printf("ok\n");
	}
	return s == -1;
}
`
	return testenv.CompileStatic(t, "probe-server", code)
}

// fakeContainer is a process in a mount namespace of its own, chrooted
// into a directory holding the probe server at /bin/server: the kernel
// shows that directory as the process's /proc/PID/root, as it shows a
// container's root filesystem.
type fakeContainer struct {
	root string
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
}

func startContainer(t *testing.T, server string) *fakeContainer {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(server)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "server"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &fakeContainer{root: root, cmd: exec.Command("/bin/server")}
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Cloneflags: syscall.CLONE_NEWNS}
	if c.in, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.out = bufio.NewReader(stdout)
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stop)
	return c
}

func (c *fakeContainer) pid() int { return c.cmd.Process.Pid }

// call makes the process call the probed function n times.
func (c *fakeContainer) call(t *testing.T, n int) {
	t.Helper()
	if _, err := fmt.Fprintf(c.in, "%d\n", n); err != nil {
		t.Fatal(err)
	}
	if line, err := c.out.ReadString('\n'); err != nil || line != "ok\n" {
		t.Fatalf("probe server answered %q, %v", line, err)
	}
}

func (c *fakeContainer) stop() {
	if c.cmd.ProcessState == nil {
		c.in.Close()
		c.cmd.Process.Kill()
		c.cmd.Wait()
	}
}

// A uprobe in a pod's container on the real kernel: published before the
// container runs (waiting), attached to the binary inside the container's
// root once it runs, counting its calls exactly and nobody else's (the
// same file run on the host is not counted); the container is replaced by
// a new process with a new root and the probe follows it; a daemon restart
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
	first := startContainer(t, e.server)
	first.call(t, 5)
	if n := slotCount(t, target, programs.SlotUprobe); n != 0 {
		t.Fatalf("counted %d calls before the container was found", n)
	}
	e.rt.RunContainer(uid, "sb-1", "app", "c-1", first.pid())
	s := waitStatus(t, target, func(s map[string]string) bool { return s["state"] == "attached" })
	if s["containerID"] != "c-1" || s["pid"] != fmt.Sprint(first.pid()) {
		t.Fatalf("attached: %v", s)
	}
	first.call(t, 7)
	if n := slotCount(t, target, programs.SlotUprobe); n != 7 {
		t.Fatalf("counted %d calls in the container, want 7", n)
	}
	// The same file run by another process (on the host) is not the
	// container's: not counted.
	cmd := exec.Command(filepath.Join(first.root, "bin", "server"))
	cmd.Stdin = strings.NewReader("9\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("host run: %v: %s", err, out)
	}
	if n := slotCount(t, target, programs.SlotUprobe); n != 7 {
		t.Fatalf("counted %d calls, want the container's 7 only", n)
	}

	// The container restarts: a new process in a new root.
	second := startContainer(t, e.server)
	first.stop()
	e.rt.ExitContainer("c-1")
	e.rt.RunContainer(uid, "sb-1", "app", "c-2", second.pid())
	waitStatus(t, target, func(s map[string]string) bool {
		return s["state"] == "attached" && s["containerID"] == "c-2" && s["pid"] == fmt.Sprint(second.pid())
	})
	second.call(t, 4)
	if n := slotCount(t, target, programs.SlotUprobe); n != 11 {
		t.Fatalf("after the restart counted %d calls, want 7+4", n)
	}

	// A daemon restart adopts the attachment: still counted, once.
	e.d.Restart(e.opts)
	waitStatus(t, target, func(s map[string]string) bool { return s["state"] == "attached" && s["containerID"] == "c-2" })
	second.call(t, 3)
	if n := slotCount(t, target, programs.SlotUprobe); n != 14 {
		t.Fatalf("after a daemon restart counted %d calls, want 11+3", n)
	}

	// The container stops: detached, and the status says so.
	second.stop()
	e.rt.ExitContainer("c-2")
	waitStatus(t, target, func(s map[string]string) bool {
		return s["state"] == "waiting" && strings.Contains(s["reason"], "detached")
	})
	if _, err := os.Lstat(filepath.Join(e.d.BPFFSRoot, "programs", rec.Key, "link")); err == nil {
		t.Error("the link of a stopped container stays pinned")
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
	c := startContainer(t, e.server)
	host := filepath.Join(c.root, "bin", "server") // the host's path of a binary
	for _, l := range []struct{ name, to string }{
		{"abs", host},
		{"up", "../../../../../../../../.." + host},
	} {
		if err := os.Symlink(l.to, filepath.Join(c.root, "bin", l.name)); err != nil {
			t.Fatal(err)
		}
	}
	e.rt.RunSandbox(uid, "sb-1", "/proc/1/ns/net")
	e.rt.RunContainer(uid, "sb-1", "app", "c-1", c.pid())
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
