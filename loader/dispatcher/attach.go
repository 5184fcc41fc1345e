package dispatcher

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/internal/xdplink"
)

// attachXDP attaches an XDP chain's first dispatcher in the target's mode
// and returns its link and the mode it got.
func attachXDP(t Target, prog *ebpf.Program) (link.Link, string, error) {
	l, mode, err := xdplink.Attach(prog, t.Ifindex, t.XDPMode)
	switch {
	case err == nil:
		return l, mode, nil
	case xdplink.IsBusy(err):
		owner := ""
		id := xdplink.Owner(t.Ifindex)
		if id != 0 {
			owner = fmt.Sprintf(" (program id %d)", id)
		}
		if id != 0 && xdplink.IsDispatcher(id) {
			// Most likely libxdp's: see libxdpJoinRefused.
			return nil, "", fault.Errorf(fault.Precondition, "interface %q already has another loader's XDP dispatcher%s, such as libxdp's (`xdp-loader status %s` lists its programs): %s; to share the interface's chain with libxdp, start bpfmount with --libxdp-dir set to libxdp's pin directory (usually /sys/fs/bpf/xdp); otherwise move libxdp's programs off the interface (`xdp-loader unload --all %s`) or use another interface: %w",
				t.Interface, owner, t.Interface, libxdpJoinRefused, t.Interface, err)
		}
		return nil, "", fault.Errorf(fault.Precondition, "interface %q already has an XDP program%s that is not this chain's dispatcher: %w", t.Interface, owner, err)
	case errors.Is(err, unix.EOPNOTSUPP) || mode == XDPModeNative && errors.Is(err, unix.EINVAL):
		return nil, "", fault.Errorf(fault.Precondition, "interface %q does not support %s XDP: %w", t.Interface, mode, err)
	}
	return nil, "", fmt.Errorf("attaching the XDP dispatcher to %q: %w", t.Interface, err)
}

func tcParent(t Target) uint32 {
	if t.Direction == Egress {
		return netlink.HANDLE_MIN_EGRESS
	}
	return netlink.HANDLE_MIN_INGRESS
}

func tcFilter(t Target, prog *ebpf.Program) *netlink.BpfFilter {
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: t.Ifindex,
			Parent:    tcParent(t),
			Handle:    t.tcHandle(),
			Priority:  t.tcPriority(),
			Protocol:  unix.ETH_P_ALL,
		},
		Name:         "bpfmount_dispatcher",
		DirectAction: true,
	}
	if prog != nil {
		f.Fd = prog.FD()
	}
	return f
}

// findFilter returns the cls_bpf filter at the chain's place on the clsact
// qdisc, or nil.
func findFilter(t Target) (*netlink.BpfFilter, error) {
	nl, err := netlink.LinkByIndex(t.Ifindex)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil, nil // the interface is gone, and its filters with it
	}
	if err != nil {
		return nil, fmt.Errorf("looking up interface %q: %w", t.Interface, err)
	}
	filters, err := netlink.FilterList(nl, tcParent(t))
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil, nil // no clsact qdisc
		}
		return nil, fmt.Errorf("listing tc filters of %s: %w", t.describe(), err)
	}
	for _, f := range filters {
		a := f.Attrs()
		if a.Priority != t.tcPriority() || a.Handle != t.tcHandle() {
			continue
		}
		bf, ok := f.(*netlink.BpfFilter)
		if !ok {
			return nil, fault.Errorf(fault.Precondition, "interface %q has a %s filter at tc priority %d handle %#x, where bpfmount places its tc %s dispatcher", t.Interface, f.Type(), a.Priority, a.Handle, t.Direction)
		}
		return bf, nil
	}
	return nil, nil
}

// checkFilterFree refuses to replace a filter that no revision of this
// chain put there.
func (c *Chain) checkFilterFree() error {
	f, err := findFilter(c.target)
	if err != nil || f == nil {
		return err
	}
	return fault.Errorf(fault.Precondition, "interface %q already has a cls_bpf filter (%q, program id %d) at tc priority %d handle %#x on %s, where bpfmount places its tc dispatcher; it is not one of bpfmount's: remove it or give the dispatcher another priority",
		c.target.Interface, f.Name, f.Id, c.target.tcPriority(), c.target.tcHandle(), c.target.Direction)
}

// replaceFilter points the chain's cls_bpf filter at prog, creating the
// clsact qdisc and the filter when missing. An existing filter's program is
// replaced in place: the kernel swaps it under RCU, so every packet runs
// either the old or the new dispatcher, whole.
func replaceFilter(t Target, prog *ebpf.Program) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: t.Ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding a clsact qdisc to %q: %w", t.Interface, err)
	}
	if err := netlink.FilterReplace(tcFilter(t, prog)); err != nil {
		return fmt.Errorf("attaching the tc dispatcher to %s: %w", t.describe(), err)
	}
	return nil
}

// deleteFilter removes the chain's filter if it still runs prog.
func deleteFilter(t Target, prog *ebpf.Program) error {
	f, err := findFilter(t)
	if err != nil || f == nil {
		return err
	}
	if ebpf.ProgramID(f.Id) != progID(prog) {
		return nil
	}
	if err := netlink.FilterDel(tcFilter(t, nil)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("detaching the tc dispatcher from %s: %w", t.describe(), err)
	}
	return nil
}
