package main

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

type hostOptions struct {
	kernel  string
	cache   string
	modules string
	timeout time.Duration
	memory  string
	retries int
	qemu    string
	smp     int
	mttcg   bool
	files   string
	rootfs  string
	cmdline string
	keep    bool
	verbose bool
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func hostMain(argv []string) (int, error) {
	var o hostOptions
	fl := flag.NewFlagSet("vmexec", flag.ContinueOnError)
	fl.StringVar(&o.kernel, "kernel", envOr("VMEXEC_KERNEL", "6.12"), "kernel to boot (a directory under <cache>/kernels)")
	fl.StringVar(&o.cache, "cache", os.Getenv("VMEXEC_CACHE"), "cache directory (default: test/vm/.cache above the working directory)")
	fl.StringVar(&o.modules, "modules", "veth,sch_ingress,cls_bpf", "kernel modules to load, comma-separated")
	timeout, err := time.ParseDuration(envOr("VMEXEC_TIMEOUT", "3m"))
	if err != nil {
		return 2, fmt.Errorf("VMEXEC_TIMEOUT: %w", err)
	}
	fl.DurationVar(&o.timeout, "timeout", timeout, "kill the VM when no exit marker arrives within this time")
	fl.StringVar(&o.memory, "memory", "1G", "guest memory")
	fl.IntVar(&o.retries, "retries", 1, "boot again this many times when the VM dies before the test binary starts")
	fl.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "qemu binary")
	fl.IntVar(&o.smp, "smp", 1, "virtual CPUs")
	fl.BoolVar(&o.mttcg, "mttcg", false, "with -smp, one host thread per vCPU (qemu 7.2 runs cross-modified code wrongly then)")
	fl.StringVar(&o.rootfs, "rootfs", os.Getenv("VMEXEC_ROOTFS"), "a directory tree merged into the VM's root filesystem (e.g. unpacked Debian packages)")
	fl.StringVar(&o.files, "files", os.Getenv("VMEXEC_FILES"), "host files to copy into the VM at the same absolute path, comma-separated")
	fl.BoolVar(&o.verbose, "v", false, "print the qemu command line and timings")
	fl.StringVar(&o.cmdline, "append", "", "more kernel command line")
	fl.BoolVar(&o.keep, "keep", false, "keep the work directory (initramfs, console and output logs)")
	if err := fl.Parse(argv); err != nil {
		return 2, err
	}
	if fl.NArg() < 1 {
		return 2, errors.New("usage: vmexec [flags] TEST-BINARY [ARGS...]")
	}
	bin, args := fl.Arg(0), fl.Args()[1:]

	if o.cache == "" {
		o.cache, err = findCache()
		if err != nil {
			return 2, err
		}
	}
	kdir := filepath.Join(o.cache, "kernels", o.kernel)
	vmlinuz := filepath.Join(kdir, "vmlinuz")
	if _, err := os.Stat(vmlinuz); err != nil {
		return 2, fmt.Errorf("kernel %q is not cached at %s: run test/vm/kernels.sh %s (make test-vm does)", o.kernel, kdir, o.kernel)
	}
	if err := checkStatic(bin); err != nil {
		return 2, err
	}
	rels, _ := filepath.Glob(filepath.Join(kdir, "modules", "*"))
	if len(rels) != 1 {
		return 2, fmt.Errorf("expected one module tree under %s, found %d", filepath.Join(kdir, "modules"), len(rels))
	}
	var mods []string
	if o.modules != "" {
		mods, err = resolveModules(rels[0], strings.Split(o.modules, ","))
		if err != nil {
			return 2, err
		}
	}

	work, err := os.MkdirTemp("", "vmexec")
	if err != nil {
		return 2, err
	}
	if o.keep {
		fmt.Fprintf(os.Stderr, "vmexec: keeping %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	initrd := filepath.Join(work, "initramfs.cpio")
	var files []string
	for _, f := range strings.Split(o.files, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		abs, err := filepath.Abs(f)
		if err != nil {
			return 2, err
		}
		if st, err := os.Stat(abs); err != nil || !st.Mode().IsRegular() {
			return 2, fmt.Errorf("-files: %s is not a regular file", abs)
		}
		files = append(files, abs)
	}
	if err := buildInitramfs(initrd, bin, args, mods, files, o.rootfs, o.kernel); err != nil {
		return 2, fmt.Errorf("building the initramfs: %w", err)
	}

	for attempt := 0; ; attempt++ {
		code, started, err := boot(o, vmlinuz, initrd, work)
		if err == nil {
			return code, nil
		}
		if started || attempt >= o.retries {
			return 1, err
		}
		fmt.Fprintf(os.Stderr, "vmexec: %v; the VM died before the test started, booting again\n", err)
	}
}

// findCache looks for test/vm/.cache in the working directory and above.
func findCache() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		c := filepath.Join(dir, "test", "vm", ".cache")
		if st, err := os.Stat(c); err == nil && st.IsDir() {
			return c, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no test/vm/.cache found above the working directory: run test/vm/kernels.sh, or set -cache")
		}
		dir = parent
	}
}

// checkStatic refuses a dynamically linked binary: the initramfs has no
// libc.
func checkStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("%s: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; build it with CGO_ENABLED=0 (and without -race)", bin)
		}
	}
	return nil
}

func buildInitramfs(out, bin string, args, mods, files []string, rootfs, kernel string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := checkStatic(self); err != nil {
		return fmt.Errorf("vmexec itself must be static to run as /init: %w", err)
	}
	r := newInitramfs()
	if rootfs != "" {
		if err := r.Tree(rootfs); err != nil {
			return fmt.Errorf("-rootfs: %w", err)
		}
	}
	r.File("init", self, 0o755)
	const pkg = "/pkg"
	testBin := pkg + "/" + filepath.Base(bin)
	r.File(testBin, bin, 0o755)
	r.Dir(pkg)
	if _, ok := r.entries["bin"]; !ok {
		r.Dir("/bin")
	}
	// The package's testdata, for tests that read it relative to their
	// working directory.
	if wd, err := os.Getwd(); err == nil {
		td := filepath.Join(wd, "testdata")
		filepath.WalkDir(td, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			rel, _ := filepath.Rel(wd, p)
			dst := pkg + "/" + filepath.ToSlash(rel)
			if d.IsDir() {
				r.Dir(dst)
			} else if d.Type().IsRegular() {
				r.File(dst, p, 0o644)
			}
			return nil
		})
	}
	// Files the tests find by their host path (objects of the repository,
	// prebuilt binaries): the same path in the guest. Executables keep
	// their execute bit.
	for _, f := range files {
		perm := uint32(0o644)
		if st, err := os.Stat(f); err == nil && st.Mode()&0o111 != 0 {
			perm = 0o755
		}
		r.File(f, f, perm)
	}
	cfg := guestConfig{
		Binary: testBin,
		Dir:    pkg,
		Args:   args,
		Env:    []string{"VMEXEC_KERNEL=" + kernel},
	}
	for k, v := range passEnv() {
		cfg.Env = append(cfg.Env, k+"="+v)
	}
	for i, m := range mods {
		dst := fmt.Sprintf("/modules/%02d-%s", i, filepath.Base(m))
		r.File(dst, m, 0o644)
		cfg.Modules = append(cfg.Modules, dst)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	r.Bytes("vmexec.json", b, 0o644)
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := r.Write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// passEnv returns the host environment the tests see in the guest: the
// variables starting with VMTEST_ or BPFMOUNT_TEST_ (test knobs) and
// GOTRACEBACK.
func passEnv() map[string]string {
	out := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "VMTEST_") || strings.HasPrefix(k, "BPFMOUNT_TEST_") || k == "GOTRACEBACK" {
			out[k] = v
		}
	}
	return out
}

// boot runs one VM. It returns the guest's exit code, whether the test
// binary was started, and an error when no exit marker arrived.
func boot(o hostOptions, vmlinuz, initrd, work string) (int, bool, error) {
	console := filepath.Join(work, "console.log")
	output := filepath.Join(work, "output.log")
	os.Remove(console)
	os.Remove(output)
	// With several vCPUs, one host thread runs them in turn: qemu 7.2's
	// multi-threaded TCG executes stale code on one vCPU while the kernel
	// rewrites it from another (6.12 oopses in bpf_dispatcher_xdp_func,
	// which every XDP attach rewrites). The guest still has the CPUs, and
	// its threads still interleave at any instruction boundary.
	accel := "tcg"
	if o.smp > 1 && !o.mttcg {
		accel = "tcg,thread=single"
	}
	args := []string{
		"-accel", accel,
		// qemu 7.2's TCG double-faults now and then on 6.12 with
		// cmpxchg16b: without it boots are clean. One vCPU unless a test
		// needs two (-smp): frames on one CPU meeting a swap on the other.
		"-cpu", "max,-cx16", "-smp", strconv.Itoa(max(o.smp, 1)), "-m", o.memory,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", vmlinuz, "-initrd", initrd,
		"-append", strings.TrimSpace("console=ttyS0 rdinit=/init panic=-1 oops=panic mitigations=off quiet " + o.cmdline),
		"-serial", "file:" + console,
		"-serial", "file:" + output,
	}
	if o.verbose {
		fmt.Fprintf(os.Stderr, "vmexec: %s %s\n", o.qemu, strings.Join(args, " "))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, o.qemu, args...)
	var qemuErr bytes.Buffer
	cmd.Stderr = &qemuErr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, false, fmt.Errorf("starting %s: %w", o.qemu, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	s := &streamer{path: output, w: os.Stdout}
	deadline := time.NewTimer(o.timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var waitErr error
	done := false
loop:
	for {
		select {
		case waitErr = <-exited:
			done = true
			break loop
		case <-tick.C:
			s.poll()
			if s.code >= 0 {
				// The guest powers off right after the marker; give it a
				// moment, then stop waiting.
				select {
				case waitErr = <-exited:
					done = true
				case <-time.After(10 * time.Second):
				}
				break loop
			}
		case <-deadline.C:
			break loop
		}
	}
	if !done {
		cancel()
		<-exited
	}
	s.poll()
	s.flush()
	started := consoleHas(console, "vmexec: running")
	if o.verbose {
		fmt.Fprintf(os.Stderr, "vmexec: kernel %s: VM ran %.1fs\n", o.kernel, time.Since(start).Seconds())
	}
	if s.code >= 0 {
		if s.code != 0 {
			printTail(console, 60)
		}
		return s.code, true, nil
	}
	printTail(console, 60)
	why := "the VM stopped without an exit marker"
	if !done {
		why = fmt.Sprintf("no exit marker within %s, VM killed", o.timeout)
	} else if waitErr != nil {
		why = fmt.Sprintf("qemu failed without an exit marker (%v): %s", waitErr, strings.TrimSpace(qemuErr.String()))
	}
	switch {
	case started:
		why += " (the tests had started)"
	case consoleHas(console, initMarker):
		why += " (/init had started, the tests had not)"
	default:
		why += " (before /init started)"
	}
	return 0, started, fmt.Errorf("kernel %s: %s", o.kernel, why)
}

// streamer copies the guest's output file to w as it grows, line by line,
// and picks out the exit marker.
type streamer struct {
	path    string
	w       io.Writer
	off     int64
	partial []byte
	code    int
	init    bool
}

func (s *streamer) poll() {
	if !s.init {
		s.code, s.init = -1, true
	}
	f, err := os.Open(s.path)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(s.off, io.SeekStart); err != nil {
		return
	}
	b, err := io.ReadAll(f)
	if err != nil || len(b) == 0 {
		return
	}
	s.off += int64(len(b))
	data := append(s.partial, b...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		s.line(data[:i+1])
		data = data[i+1:]
	}
	s.partial = append([]byte(nil), data...)
}

func (s *streamer) line(l []byte) {
	if rest, ok := bytes.CutPrefix(l, []byte(exitMarker)); ok {
		if n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(string(rest)), ">>>")); err == nil {
			s.code = n
			return
		}
	}
	s.w.Write(l)
}

func (s *streamer) flush() {
	if len(s.partial) > 0 {
		s.line(s.partial)
		s.partial = nil
	}
}

func consoleHas(path, what string) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Contains(b, []byte(what))
}

func printTail(path string, n int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	fmt.Fprintf(os.Stderr, "--- vmexec: kernel console (last %d lines) ---\n%s\n--- end of console ---\n", len(lines), strings.Join(lines, "\n"))
}
