package dispatcher

// libxdp shares XDP dispatchers through pins: for the dispatcher attached
// to interface IFINDEX with program ID ID it reads
// <bpffs>/xdp/dispatch-IFINDEX-ID/prog<N>-prog (and -link), slot N's
// program, while holding an exclusive flock on <bpffs>/xdp. The XDP
// dispatcher already carries libxdp's configuration (version 2) in its
// .rodata, so with these pins libxdp's tools (`xdp-loader status`) see a
// chain's members, priorities and chain-call actions.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/loader/internal/xdplink"
)

// Option adjusts Open.
type Option func(*Chain)

// WithLibxdpPins makes an XDP chain publish each live revision in
// libxdp's pin layout under dir (libxdp's is <bpffs>/xdp).
func WithLibxdpPins(dir string) Option {
	return func(c *Chain) {
		if c.target.Hook == XDP {
			c.libxdpDir = dir
		}
	}
}

// libxdpPin returns the libxdp directory of revision r ("" without
// libxdp pins).
func (c *Chain) libxdpPin(r *revision) string {
	if c.libxdpDir == "" || r == nil || r.dispatcher == nil {
		return ""
	}
	return filepath.Join(c.libxdpDir, fmt.Sprintf("dispatch-%d-%d", c.target.Ifindex, progID(r.dispatcher)))
}

// libxdpLock takes libxdp's lock for publishing or withdrawing one
// revision's pins. A shared chain holds it across each whole change
// instead (beginShared), and its withdrawals, some from retiring
// goroutines, touch only directories of dispatchers no longer attached,
// which libxdp never reads.
func (c *Chain) libxdpLock() (func(), error) {
	if c.shared() {
		return func() {}, nil
	}
	return c.flockLibxdp()
}

// publishLibxdp pins revision r's members in libxdp's layout.
func (c *Chain) publishLibxdp(r *revision) error {
	dir := c.libxdpPin(r)
	if dir == "" {
		return nil
	}
	unlock, err := c.libxdpLock()
	if err != nil {
		return err // flockLibxdp says what failed
	}
	defer unlock()
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	for i, s := range r.slots {
		lfd, ok := s.link.(interface{ FD() int })
		if !ok {
			return fmt.Errorf("the link of member %q has no descriptor", s.member.Key)
		}
		for _, p := range []struct {
			fd   int
			name string
		}{{s.member.Program.FD(), fmt.Sprintf("prog%d-prog", i)}, {lfd.FD(), fmt.Sprintf("prog%d-link", i)}} {
			path := filepath.Join(dir, p.name)
			os.Remove(path)
			if err := objPin(p.fd, path); err != nil {
				return fmt.Errorf("pinning %s for libxdp: %w", path, err)
			}
		}
	}
	return nil
}

// withdrawLibxdp removes revision r's libxdp pins.
func (c *Chain) withdrawLibxdp(r *revision) {
	dir := c.libxdpPin(r)
	if dir == "" {
		return
	}
	if unlock, err := c.libxdpLock(); err == nil {
		defer unlock()
	}
	os.RemoveAll(dir)
}

// removeStaleLibxdp removes libxdp directories of this interface left by
// revisions that are gone (a crash between building and retiring).
func (c *Chain) removeStaleLibxdp() {
	if c.libxdpDir == "" {
		return
	}
	dirs, _ := filepath.Glob(filepath.Join(c.libxdpDir, fmt.Sprintf("dispatch-%d-*", c.target.Ifindex)))
	live := c.libxdpPin(c.cur)
	if c.shared() {
		// libxdp's pins of whatever is attached, its dispatcher or ours.
		live = c.libxdpDirOf(ebpf.ProgramID(xdplink.Owner(c.target.Ifindex)))
	}
	for _, d := range dirs {
		if d != live {
			os.RemoveAll(d)
		}
	}
}

// objPin pins fd at path with BPF_OBJ_PIN. (The library's Pin moves an
// object's one pin; libxdp's layout needs a second one.)
func objPin(fd int, path string) error {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return err
	}
	attr := struct {
		pathname  uint64
		bpfFD     uint32
		fileFlags uint32
		pathFD    int32
		_         uint32
	}{pathname: uint64(uintptr(unsafe.Pointer(p))), bpfFD: uint32(fd)}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_PIN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(p)
	if errno != 0 {
		return errno
	}
	return nil
}

// libxdpJoinRefused says why bpfmount without libxdp pins cannot add
// programs to a dispatcher that libxdp attached: libxdp attaches through
// netlink, such a chain with a bpf_link, and the kernel refuses a bpf_link
// over a program attached through netlink (EBUSY), as it refuses libxdp's
// netlink replace of a dispatcher a bpf_link holds.
const libxdpJoinRefused = "without --libxdp-dir bpfmount attaches its dispatcher with a bpf_link and cannot join a chain attached through netlink, as libxdp attaches it"
