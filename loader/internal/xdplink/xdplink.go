// Package xdplink attaches a program to an interface's XDP hook in an
// attach mode, for both of the loader's paths: a lone program, and a
// chain's dispatcher.
package xdplink

import (
	"errors"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Attach modes.
const (
	Auto   = "auto"   // native, falling back to skb
	Native = "native" // driver mode
	SKB    = "skb"    // generic mode
)

// Attach attaches prog to the XDP hook of the interface ifindex in mode
// and returns the link and the mode it got. Auto tries native first and
// falls back to skb, except when the hook is busy: then no mode would do.
// Errors are the kernel's, for the caller to explain (see IsBusy).
func Attach(prog *ebpf.Program, ifindex int, mode string) (link.Link, string, error) {
	try := func(flags link.XDPAttachFlags) (link.Link, error) {
		return link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: flags})
	}
	switch mode {
	case Native:
		l, err := try(link.XDPDriverMode)
		return l, Native, err
	case SKB:
		l, err := try(link.XDPGenericMode)
		return l, SKB, err
	}
	l, err := try(link.XDPDriverMode)
	if err == nil || IsBusy(err) {
		return l, Native, err
	}
	l, err = try(link.XDPGenericMode)
	return l, SKB, err
}

// IsBusy reports whether an attach failed because the hook already runs a
// program.
func IsBusy(err error) bool {
	return errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST)
}

// Owner returns the ID of the program attached to the interface's XDP
// hook, or 0.
func Owner(ifindex int) uint32 {
	nl, err := netlink.LinkByIndex(ifindex)
	if err != nil || nl.Attrs().Xdp == nil {
		return 0
	}
	return nl.Attrs().Xdp.ProgId
}

// ModeOf reports how the interface's XDP program is attached: Native,
// SKB, or "" (none, or offloaded).
func ModeOf(ifindex int) string {
	nl, err := netlink.LinkByIndex(ifindex)
	if err != nil || nl.Attrs().Xdp == nil {
		return ""
	}
	switch nl.Attrs().Xdp.AttachMode {
	case xdpAttachedDriver:
		return Native
	case xdpAttachedSKB:
		return SKB
	}
	return ""
}

// Values of IFLA_XDP_ATTACHED.
const (
	xdpAttachedDriver = 1
	xdpAttachedSKB    = 2
)

// DispatcherName is the program name of an XDP dispatcher in libxdp's
// design: libxdp's own and bpfmount's.
const DispatcherName = "xdp_dispatcher"

// IsDispatcher reports whether program id is an XDP dispatcher in libxdp's
// design (by its name, which libxdp checks too).
func IsDispatcher(id uint32) bool {
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return false
	}
	defer p.Close()
	info, err := p.Info()
	return err == nil && info.Name == DispatcherName
}
