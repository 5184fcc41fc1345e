// Command vmexec runs a Go test binary inside a qemu virtual machine that
// boots a Debian kernel, for `go test -exec`:
//
//	CGO_ENABLED=0 go test -exec "$PWD/bin/vmexec -kernel 6.12" ./test/vm/
//
// It packs the (static) test binary, the package's testdata directory, the
// kernel modules the tests need and itself into an initramfs, and boots
// qemu (TCG: no KVM needed). Inside the VM the same binary runs as /init
// (PID 1): it mounts proc, sysfs, devtmpfs, bpffs, tracefs and a tmpfs on
// /tmp, loads the modules, runs the test binary with go test's arguments in
// a copy of the package directory, and writes its output to the second
// serial port followed by an exit marker; then it powers the VM off. The
// host side streams that output and exits with the guest's exit code, so
// `go test` reports pass and fail as usual. A VM that gives no marker within
// -timeout is killed; on any failure the kernel console's tail is printed.
//
// Kernels come from test/vm/kernels.sh, which caches them under
// test/vm/.cache/kernels/<name>/ (vmlinuz and modules/<release>/).
//
// Flags (environment variable in brackets):
//
//	-kernel NAME     kernel to boot, a directory under the cache [VMEXEC_KERNEL] (default 6.12)
//	-cache DIR       the cache directory [VMEXEC_CACHE] (default: test/vm/.cache above the working directory)
//	-modules LIST    modules to load, with their dependencies (default veth,sch_ingress,cls_bpf)
//	-timeout D       kill the VM after D without an exit marker [VMEXEC_TIMEOUT] (default 3m)
//	-memory SIZE     guest memory (default 1G)
//	-retries N       boot again when the VM dies before the test binary starts (default 1)
//	-qemu PATH       qemu binary (default qemu-system-x86_64)
//	-smp N           virtual CPUs (default 1), run in turn by one host thread
//	-mttcg           with -smp, one host thread per vCPU instead
//	-files LIST      host files copied into the VM at the same absolute path, comma-separated [VMEXEC_FILES]
//	-rootfs DIR      a directory tree merged into the VM's root filesystem [VMEXEC_ROOTFS]
//	-v               print the qemu command line and timings to stderr
//
// The guest sees VMEXEC_KERNEL=<name> in its environment; tests use it to
// know they are inside a VM. Host variables named VMTEST_* or
// BPFMOUNT_TEST_* pass through to the tests.
package main

import (
	"fmt"
	"os"
)

func main() {
	if os.Getpid() == 1 {
		guestInit() // never returns
	}
	code, err := hostMain(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmexec: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}
