package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// guestConfig is what the host tells /init, as /vmexec.json.
type guestConfig struct {
	Binary  string   `json:"binary"`  // path of the test binary in the initramfs
	Dir     string   `json:"dir"`     // working directory (the package copy)
	Args    []string `json:"args"`    // its arguments
	Env     []string `json:"env"`     // extra environment
	Modules []string `json:"modules"` // module files to load, in order
}

const (
	outPort    = "/dev/ttyS1"
	exitMarker = "<<<vmexec exit="
	initMarker = "vmexec: init started"
)

// guestInit is /init: it sets the VM up, runs the test binary and powers
// off. It never returns.
func guestInit() {
	code := 2
	out := os.Stdout
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(out, "vmexec: init panicked: %v\n", r)
			code = 2
		}
		finish(out, code)
	}()
	kmsg("%s", initMarker)
	if err := setup(); err != nil {
		kmsg("vmexec: %v", err)
	}
	port, err := openPort(outPort)
	if err != nil {
		kmsg("vmexec: opening %s: %v", outPort, err)
	} else {
		out = port
	}
	cfg, err := readConfig()
	if err != nil {
		fmt.Fprintf(out, "vmexec: %v\n", err)
		return
	}
	for _, m := range cfg.Modules {
		if err := loadModule(m); err != nil {
			fmt.Fprintf(out, "vmexec: loading module %s: %v\n", m, err)
			return
		}
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	kmsg("vmexec: running %s", cfg.Binary)
	cmd := exec.Command(cfg.Binary, cfg.Args...)
	cmd.Dir = cfg.Dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append([]string{"PATH=/bin", "HOME=/root", "TMPDIR=/tmp"}, cfg.Env...)
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		code = 0
	case errors.As(err, &ee):
		code = ee.ExitCode()
		if code < 0 {
			code = 2 // killed by a signal
		}
	default:
		fmt.Fprintf(out, "vmexec: running %s: %v\n", cfg.Binary, err)
	}
	if code != 0 {
		dumpKernelLog(40)
	}
}

// finish writes the exit marker, waits until the serial port has sent
// everything, and powers off.
func finish(out *os.File, code int) {
	fmt.Fprintf(out, "\n%s%d>>>\n", exitMarker, code)
	unix.IoctlSetInt(int(out.Fd()), unix.TCSBRK, 1) // tcdrain
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour)
	}
}

func setup() error {
	mounts := []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"bpffs", "/sys/fs/bpf", "bpf"},
		// Where a node's init mounts cgroup2 and the daemon looks for it
		// (a pod's container cgroup).
		{"cgroup2", "/sys/fs/cgroup", "cgroup2"},
		{"tracefs", "/sys/kernel/tracing", "tracefs"},
		{"tmpfs", "/tmp", "tmpfs"},
		{"tmpfs", "/run", "tmpfs"},
	}
	var errs []error
	for _, m := range mounts {
		// The host's -files land at their host paths, which may be under
		// /tmp or /run (a clone in /tmp): a tmpfs there would hide them.
		// The initramfs root is in memory already, so keep it as is.
		if m.fstype == "tmpfs" && hasEntries(m.dst) {
			continue
		}
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mounting %s on %s: %w", m.fstype, m.dst, err))
		}
	}
	os.MkdirAll("/root", 0o700)
	return errors.Join(errs...)
}

// hasEntries reports whether dir exists and holds anything.
func hasEntries(dir string) bool {
	ents, err := os.ReadDir(dir)
	return err == nil && len(ents) > 0
}

// openPort opens a serial port in raw mode, so that output passes
// unchanged (no \n to \r\n).
func openPort(p string) (*os.File, error) {
	f, err := os.OpenFile(p, os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	if t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
		t.Oflag &^= unix.OPOST
		t.Lflag &^= unix.ECHO | unix.ICANON | unix.ISIG | unix.IEXTEN
		t.Cflag = t.Cflag&^(unix.CBAUD|unix.CSIZE|unix.PARENB) | unix.CS8 | unix.B115200
		unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t)
	}
	return f, nil
}

func readConfig() (*guestConfig, error) {
	b, err := os.ReadFile("/vmexec.json")
	if err != nil {
		return nil, err
	}
	var c guestConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("reading /vmexec.json: %w", err)
	}
	return &c, nil
}

// MODULE_INIT_COMPRESSED_FILE: the kernel decompresses the module itself.
const moduleInitCompressedFile = 4

func loadModule(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if strings.HasSuffix(p, ".xz") || strings.HasSuffix(p, ".zst") || strings.HasSuffix(p, ".gz") {
		flags = moduleInitCompressedFile
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// kmsg writes a line to the kernel log at level 2 (critical), so that the
// console shows it even with "quiet": the host looks for these lines.
func kmsg(format string, args ...any) {
	f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "<2>"+format+"\n", args...)
}

// dumpKernelLog prints the last lines of the kernel log to the console
// (the host prints the console's tail when a run fails).
func dumpKernelLog(lines int) {
	n, err := unix.Klogctl(unix.SYSLOG_ACTION_SIZE_BUFFER, nil)
	if err != nil || n <= 0 {
		return
	}
	buf := make([]byte, n)
	n, err = unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf)
	if err != nil {
		return
	}
	all := strings.Split(strings.TrimRight(string(buf[:n]), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	con, err := os.OpenFile("/dev/ttyS0", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return
	}
	defer con.Close()
	fmt.Fprintf(con, "\n--- vmexec: kernel log tail ---\n%s\n", strings.Join(all, "\n"))
}
