package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Cgroup2 mounts a cgroup2 hierarchy of its own in a temporary directory
// (the kernel's one cgroup2 hierarchy, seen through a new mount: that
// works whether the node mounts cgroup2 already or not) and unmounts it
// at the end. Cgroups made in it with MakeCgroup are removed first.
func Cgroup2(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "cgroup2")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("none", dir, "cgroup2", 0, ""); err != nil {
		t.Skipf("skipping: cannot mount cgroup2 at %s (%v): this kernel has no cgroup v2", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting cgroup2 %s: %v", dir, err)
		}
	})
	return dir
}

// MakeCgroup creates dir and its missing parents as cgroups and removes
// them (deepest first) at the end of the test; processes the test ran in
// them must have exited.
func MakeCgroup(t testing.TB, dir string) {
	t.Helper()
	var made []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		made = append(made, d)
	}
	for i := len(made) - 1; i >= 0; i-- {
		if err := os.Mkdir(made[i], 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, d := range made {
			removeCgroup(t, d)
		}
	})
}

// removeCgroup removes a cgroup, waiting briefly for exited processes to
// leave it (the kernel frees them asynchronously).
func removeCgroup(t testing.TB, d string) {
	var err error
	for i := 0; i < 50; i++ {
		if err = unix.Rmdir(d); err == nil || errors.Is(err, unix.ENOENT) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("removing cgroup %s: %v", d, err)
}

// RandomName returns a short random name for test objects.
func RandomName(prefix string) string { return prefix + randomHex(4) }

// RunInCgroup runs the helper mode with arg as a process born in the
// cgroup dir (CLONE_INTO_CGROUP: it never runs outside it), and returns
// its output and exit code. Modes: "udp-send" (ten datagrams to arg,
// host:port), "connect" (a TCP connect to arg; exit HelperDenied on EPERM).
func RunInCgroup(t testing.TB, dir, mode, arg string) (string, int) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("opening cgroup %s: %v", dir, err)
	}
	defer unix.Close(fd)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, arg)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("running helper in cgroup %s: %v", dir, err)
	}
	return out.String(), 0
}

// netHelper runs the network modes of the helper.
func netHelper(mode, addr string) int {
	switch mode {
	case "udp-send":
		c, err := net.Dial("udp4", addr)
		if err != nil {
			return report(err)
		}
		defer c.Close()
		for i := 0; i < 10; i++ {
			if _, err := c.Write([]byte("bpfmount")); err != nil {
				return report(err)
			}
		}
		fmt.Println("sent")
		return HelperOK
	case "connect":
		c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
		if err != nil {
			return report(err)
		}
		c.Close()
		fmt.Println("connected")
		return HelperOK
	}
	return -1
}

// PodCgroup lays out a pod's cgroup under a cgroup2 mount the way kubelet
// does (cgrouppath.PodPath names it) with a "container" cgroup inside, as
// the runtime makes, and returns both; they are removed at the end.
func PodCgroup(t testing.TB, mount, podPath string) (pod, container string) {
	t.Helper()
	pod = filepath.Join(mount, podPath)
	container = filepath.Join(pod, "container")
	MakeCgroup(t, container)
	return pod, container
}

// CgroupPrograms counts the programs attached to a cgroup for one attach
// type.
func CgroupPrograms(t testing.TB, dir string, at ebpf.AttachType) int {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
	if err != nil {
		t.Fatalf("querying the programs on cgroup %s: %v", dir, err)
	}
	return len(res.Programs)
}

// MapValue reads the value at key 0 of a pinned array map (a volume's) as
// bytes, as many as the map's values hold.
func MapValue(t testing.TB, pin string) []byte {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	v := make([]byte, m.ValueSize())
	if err := m.Lookup(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// MapCounter reads the uint64 at key 0 of a pinned array map (a volume's).
func MapCounter(t testing.TB, pin string) uint64 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var v uint64
	if err := m.Lookup(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	return v
}
