package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/deploy/examples/xdp-counter/counter"
)

// The test binary doubles as the consumer process: a pod's container, run
// in its own mount namespace and, when asked, as an unprivileged user.
const helperEnv = "BPFMOUNT_TEST_HELPER"

// Helper exit codes.
const (
	HelperOK     = 0
	HelperFailed = 1
	HelperDenied = 3 // EACCES or EPERM opening or writing the map
)

// RunHelperIfAsked runs the consumer side when the test binary was started
// as a helper, and exits. Call it first in TestMain.
func RunHelperIfAsked() {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	os.Exit(runHelper(mode, os.Args[1:]))
}

func runHelper(mode string, args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "helper: want one path")
		return HelperFailed
	}
	if rc := netHelper(mode, args[0]); rc >= 0 {
		return rc
	}
	switch mode {
	case "read-counter":
		c, err := counter.Read(args[0])
		if err != nil {
			return report(err)
		}
		fmt.Printf("%d %d\n", c.Packets, c.Bytes)
		return HelperOK
	case "write-map":
		m, err := ebpf.LoadPinnedMap(args[0], nil)
		if err != nil {
			return report(err)
		}
		defer m.Close()
		zero := make([]byte, m.ValueSize())
		var err2 error
		if m.Type() == ebpf.PerCPUArray || m.Type() == ebpf.PerCPUHash {
			vals := make([][]byte, ebpf.MustPossibleCPU())
			for i := range vals {
				vals[i] = zero
			}
			err2 = m.Update(uint32(0), vals, ebpf.UpdateAny)
		} else {
			err2 = m.Update(uint32(0), zero, ebpf.UpdateAny)
		}
		if err2 != nil {
			return report(err2)
		}
		fmt.Println("written")
		return HelperOK
	}
	fmt.Fprintln(os.Stderr, "helper: unknown mode", mode)
	return HelperFailed
}

func report(err error) int {
	fmt.Fprintln(os.Stderr, err)
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		return HelperDenied
	}
	return HelperFailed
}

// Consumer says how to run the helper.
type Consumer struct {
	// UID and GID to run as; 0 keeps root.
	UID, GID uint32
	// Groups are supplementary groups (a pod's fsGroup).
	Groups []uint32
	// CapBPF grants CAP_BPF (as the only capability) to a non-root consumer.
	CapBPF bool
}

// RunConsumer runs the helper mode on path in a new mount namespace (a
// container's view: a copy of the host's mounts), as c says, and returns
// its output and exit code.
func RunConsumer(t testing.TB, c Consumer, mode, path string) (string, int) {
	t.Helper()
	bin := helperBinary(t)
	cmd := exec.Command(bin, path)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if c.UID != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: c.Groups}
		if c.CapBPF {
			cmd.SysProcAttr.AmbientCaps = []uintptr{unix.CAP_BPF}
		}
	}
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("running consumer: %v", err)
	}
	return out.String(), 0
}

// helperBinary copies the test binary where an unprivileged user can run
// it (go test builds into a 0700 directory).
func helperBinary(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bpfm-consumer")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := filepath.Join(dir, "consumer")
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, src); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}
