// Package vm holds the kernel tests that need features the host kernel
// lacks (freplace dispatchers): they run inside qemu VMs booting Debian's
// 6.1 and 6.12 kernels, through the `go test -exec` wrapper in cmd/vmexec.
// Run them with `make test-vm`. Outside a VM every test skips, saying why.
package vm
