package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/uuid"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/internal/cri"
	"github.com/bpfmount/bpfmount/internal/cri/critest"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/test/programs"
)

// containerEnv is a daemon whose runtime (a fake CRI) reports "containers"
// that are processes the test starts, each chrooted into a root directory
// of its own, in a mount namespace of its own, and a policy granting
// namespace team-a uprobes in its pods' containers only.
type containerEnv struct {
	d    *testenv.Daemon
	opts testenv.DaemonOptions
	rt   *critest.Runtime
	img  string
	dir  string
	// server is the static probe server's source binary on the host.
	server string
	// cgroups is a cgroup2 mount where the containers' cgroups are made.
	cgroups string
}

func newContainerEnv(t *testing.T) *containerEnv {
	t.Helper()
	testenv.RequireRoot(t)
	e := &containerEnv{img: testenv.Layout(t, testenv.TraceCountObject, "v1"), server: buildProbeServer(t)}
	var ep string
	e.rt, ep = critest.Start(t)
	layoutDir := strings.TrimSuffix(strings.TrimPrefix(e.img, "oci:"), ":v1")
	pol, err := policy.Parse([]byte(`apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: own-containers
  namespaces: ["team-a"]
  images: ["oci:` + filepath.Dir(layoutDir) + `/*"]
  hooks: ["uprobe", "uretprobe"]
  attachTo: ["container:*:/bin/*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	c, err := cri.Dial(ep)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	e.opts = testenv.DaemonOptions{Configure: func(o *driver.Options) {
		o.Policy = policy.Static(pol)
		o.CRI, o.SandboxPoll = c, 20*time.Millisecond
	}}
	e.d = testenv.StartDaemon(t, e.opts)
	e.dir = testenv.ShortTempDir(t)
	e.cgroups = testenv.Cgroup2(t)
	return e
}

// cgroup is a path for a new cgroup of the test (startContainer makes it).
func (e *containerEnv) cgroup(name string) string {
	return filepath.Join(e.cgroups, "bpfmount-test-"+testenv.RandomName(name))
}

// runBinary runs the binary at path with input on stdin, in the cgroup
// dir (made here) or, if dir is empty, in the test's own.
func runBinary(t *testing.T, path, dir, input string) {
	t.Helper()
	cmd := exec.Command(path)
	cmd.Stdin = strings.NewReader(input)
	if dir != "" {
		testenv.MakeCgroup(t, dir)
		cg, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(cg)
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("running %s: %v: %s", path, err, out)
	}
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
// answering "ok" after each: a container's long-lived main process. For
// -N, a child process it forks makes the N calls (a container's worker).
func buildProbeServer(t *testing.T) string {
	t.Helper()
	code := `#include <stdio.h>
#include <unistd.h>
#include <sys/wait.h>
__attribute__((noinline)) int ` + testenv.ProbeTargetSymbol + `(int i) { asm volatile("" ::: "memory"); return i + 1; }
static int calls(int n) { int s = 0; for (int i = 0; i < n; i++) s += ` + testenv.ProbeTargetSymbol + `(i); return s; }
int main(void) {
	int n, s = 0;
	setvbuf(stdout, NULL, _IONBF, 0);
	while (scanf("%d", &n) == 1) {
		if (n < 0) {
			pid_t p = fork();
			if (p == 0) _exit(calls(-n) == -1);
			if (p < 0 || waitpid(p, NULL, 0) != p) return 2;
		} else {
			s += calls(n);
		}
		printf("ok\n");
	}
	return s == -1;
}
`
	return testenv.CompileStatic(t, "probe-server", code)
}

// ctStatus reads the status a volume shows its pod, values as text (the
// container's pid is a JSON number).
func ctStatus(t *testing.T, target string) map[string]string {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(target, loader.StatusMap), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	v := make([]byte, loader.StatusSize)
	if err := m.Lookup(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(bytes.TrimRight(v, "\x00"), &raw); err != nil {
		t.Fatalf("status %q: %v", v, err)
	}
	out := map[string]string{}
	for k, x := range raw {
		out[k] = fmt.Sprint(x)
	}
	return out
}

func ctWait(t *testing.T, target string, ok func(map[string]string) bool) map[string]string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := ctStatus(t, target)
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("status stayed %v", s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeContainer is a process in a mount namespace of its own, chrooted
// into a directory holding the probe server at /bin/server, born in a
// cgroup2 cgroup of its own: the kernel shows that directory as the
// process's /proc/PID/root, as it shows a container's root filesystem,
// and the cgroup holds the process and its children, as a container's.
type fakeContainer struct {
	root string
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
}

func startContainer(t *testing.T, server, cgroup string) *fakeContainer {
	t.Helper()
	testenv.MakeCgroup(t, cgroup)
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
	cg, err := unix.Open(cgroup, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cg)
	c := &fakeContainer{root: root, cmd: exec.Command("/bin/server")}
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Cloneflags: syscall.CLONE_NEWNS, UseCgroupFD: true, CgroupFD: cg}
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
	if s := ctStatus(t, target); s["state"] != "waiting" || s["container"] != "app" {
		t.Fatalf("before the container runs: %v", s)
	}
	e.rt.RunSandbox(uid, "sb-1", "/proc/1/ns/net")
	first := startContainer(t, e.server, e.cgroup("c1"))
	first.call(t, 5)
	first.call(t, -5)
	if n := slotCount(t, target, programs.SlotUprobe); n != 0 {
		t.Fatalf("counted %d calls before the container was found", n)
	}
	e.rt.RunContainer(uid, "sb-1", "app", "c-1", first.pid())
	s := ctWait(t, target, func(s map[string]string) bool { return s["state"] == "attached" })
	if s["containerID"] != "c-1" || s["pid"] != fmt.Sprint(first.pid()) {
		t.Fatalf("attached: %v", s)
	}
	first.call(t, 7)
	if n := slotCount(t, target, programs.SlotUprobe); n != 7 {
		t.Fatalf("counted %d calls in the container, want 7", n)
	}
	// Every process of the container counts: a child of its main
	// process, and another child started later.
	first.call(t, -6)
	if n := slotCount(t, target, programs.SlotUprobe); n != 13 {
		t.Fatalf("counted %d calls with a child of the container's process, want 7+6", n)
	}
	first.call(t, -2)
	if n := slotCount(t, target, programs.SlotUprobe); n != 15 {
		t.Fatalf("counted %d calls with a second child, want 7+6+2", n)
	}
	// The same file run by processes that are not the container's (on
	// the host, and in another cgroup): not counted.
	same := filepath.Join(first.root, "bin", "server")
	runBinary(t, same, "", "9\n-4\n")
	runBinary(t, same, e.cgroup("other"), "8\n-3\n")
	if n := slotCount(t, target, programs.SlotUprobe); n != 15 {
		t.Fatalf("counted %d calls, want the container's 15 only", n)
	}

	// The container restarts: a new process in a new root and a new
	// cgroup.
	second := startContainer(t, e.server, e.cgroup("c2"))
	first.stop()
	e.rt.ExitContainer("c-1")
	e.rt.RunContainer(uid, "sb-1", "app", "c-2", second.pid())
	ctWait(t, target, func(s map[string]string) bool {
		return s["state"] == "attached" && s["containerID"] == "c-2" && s["pid"] == fmt.Sprint(second.pid())
	})
	second.call(t, 4)
	second.call(t, -1)
	if n := slotCount(t, target, programs.SlotUprobe); n != 20 {
		t.Fatalf("after the restart counted %d calls, want 15+4+1", n)
	}

	// A daemon restart adopts the attachment: still counted, once.
	e.d.Restart(e.opts)
	ctWait(t, target, func(s map[string]string) bool { return s["state"] == "attached" && s["containerID"] == "c-2" })
	second.call(t, 3)
	second.call(t, -2)
	if n := slotCount(t, target, programs.SlotUprobe); n != 25 {
		t.Fatalf("after a daemon restart counted %d calls, want 20+3+2", n)
	}

	// The container stops: detached, and the status says so.
	second.stop()
	e.rt.ExitContainer("c-2")
	ctWait(t, target, func(s map[string]string) bool {
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
	c := startContainer(t, e.server, e.cgroup("c"))
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
		s := ctWait(t, target, func(s map[string]string) bool { return s["state"] == "failed" })
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
