package testenv

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// BuildProbeServer returns a static C program (probes/probe-server.c)
// that calls ProbeTargetSymbol N times for each number N it reads on
// stdin, answering "ok" after each: a container's long-lived main process.
// For -N, a child process it forks makes the N calls (a container's
// worker). Prebuilt or compiled as BuildProbeTarget.
func BuildProbeServer(t testing.TB) string {
	t.Helper()
	return probeBinary(t, "probe-server")
}

// FakeContainer is a process in a mount namespace of its own, chrooted
// into a directory holding the probe server at /bin/server, born in a
// cgroup2 cgroup of its own: the kernel shows that directory as the
// process's /proc/PID/root, as it shows a container's root filesystem,
// and the cgroup holds the process and its children, as a container's.
type FakeContainer struct {
	// Root is the container's root directory on the host.
	Root string
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
}

// StartContainer starts the probe server (from BuildProbeServer) as a
// fake container in the cgroup dir, which it makes; the test's cleanup
// stops it and removes the cgroup.
func StartContainer(t testing.TB, server, cgroup string) *FakeContainer {
	t.Helper()
	MakeCgroup(t, cgroup)
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
	c := &FakeContainer{Root: root, cmd: exec.Command("/bin/server")}
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
	t.Cleanup(c.Stop)
	return c
}

// PID is the container's main process.
func (c *FakeContainer) PID() int { return c.cmd.Process.Pid }

// Call makes the main process call the probed function n times, or for
// -n, a child it forks.
func (c *FakeContainer) Call(t testing.TB, n int) {
	t.Helper()
	if _, err := fmt.Fprintf(c.in, "%d\n", n); err != nil {
		t.Fatal(err)
	}
	if line, err := c.out.ReadString('\n'); err != nil || line != "ok\n" {
		t.Fatalf("probe server answered %q, %v", line, err)
	}
}

// Stop kills the container's process.
func (c *FakeContainer) Stop() {
	if c.cmd.ProcessState == nil {
		c.in.Close()
		c.cmd.Process.Kill()
		c.cmd.Wait()
	}
}

// RunBinary runs the binary at path with input on stdin, in the cgroup
// dir (made here) or, if dir is empty, in the test's own.
func RunBinary(t testing.TB, path, dir, input string) {
	t.Helper()
	cmd := exec.Command(path)
	cmd.Stdin = strings.NewReader(input)
	if dir != "" {
		MakeCgroup(t, dir)
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
