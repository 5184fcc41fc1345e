package xdplink

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// iflaXDPExpectedFD is IFLA_XDP_EXPECTED_FD (Linux 5.7), which the netlink
// package does not name.
const iflaXDPExpectedFD = 8

// Replace sets the program on the interface's XDP hook through netlink,
// the way libxdp attaches its dispatchers: prog (nil detaches) replaces
// expected atomically, and fails with EEXIST when expected is no longer
// the program attached (XDP_FLAGS_REPLACE); with expected nil it attaches
// only to an empty hook (XDP_FLAGS_UPDATE_IF_NOEXIST). mode is Native or
// SKB and must be the mode expected runs in. Unlike a bpf_link, such an
// attachment is not tied to any descriptor or pin: it stays until replaced
// or detached, and other netlink loaders may replace it.
func Replace(ifindex int, prog, expected *ebpf.Program, mode string) error {
	var flags uint32
	switch mode {
	case Native:
		flags = unix.XDP_FLAGS_DRV_MODE
	case SKB:
		flags = unix.XDP_FLAGS_SKB_MODE
	default:
		return fmt.Errorf("xdplink: replace needs mode %q or %q, not %q", Native, SKB, mode)
	}
	fd := -1
	if prog != nil {
		fd = prog.FD()
	}
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	attrs := nl.NewRtAttr(unix.IFLA_XDP|unix.NLA_F_NESTED, nil)
	attrs.AddRtAttr(nl.IFLA_XDP_FD, nl.Uint32Attr(uint32(fd)))
	if expected != nil {
		flags |= unix.XDP_FLAGS_REPLACE
		attrs.AddRtAttr(iflaXDPExpectedFD, nl.Uint32Attr(uint32(expected.FD())))
	} else {
		flags |= unix.XDP_FLAGS_UPDATE_IF_NOEXIST
	}
	attrs.AddRtAttr(nl.IFLA_XDP_FLAGS, nl.Uint32Attr(flags))
	req.AddData(attrs)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// AttachNetlink attaches prog to the interface's empty XDP hook through
// netlink in mode and returns the mode it got: Auto tries native first
// and falls back to skb, except when the hook is busy.
func AttachNetlink(prog *ebpf.Program, ifindex int, mode string) (string, error) {
	switch mode {
	case Native, SKB:
		return mode, Replace(ifindex, prog, nil, mode)
	}
	err := Replace(ifindex, prog, nil, Native)
	if err == nil || IsBusy(err) {
		return Native, err
	}
	return SKB, Replace(ifindex, prog, nil, SKB)
}
