package driver

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// defaultRouteInterface returns the name of the interface that holds the
// node's default route: the IPv4 one, else the IPv6 one; among several
// default routes of a family, the one of lowest metric (the kernel's
// choice). h is the network namespace to look in (nil: the daemon's).
func defaultRouteInterface(h *netlink.Handle) (string, error) {
	if h == nil {
		h = &netlink.Handle{}
	}
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		routes, err := h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return "", fmt.Errorf("listing the node's routes: %w", err)
		}
		best := -1
		for i, r := range routes {
			if !isDefault(r.Dst) || linkOf(r) == 0 {
				continue
			}
			if best < 0 || r.Priority < routes[best].Priority {
				best = i
			}
		}
		if best < 0 {
			continue
		}
		l, err := h.LinkByIndex(linkOf(routes[best]))
		if err != nil {
			return "", fmt.Errorf("looking up the interface of the default route (index %d): %w", linkOf(routes[best]), err)
		}
		return l.Attrs().Name, nil
	}
	return "", fault.Errorf(fault.Precondition, "interface %s names the interface of the node's default route, and this node has no default route (IPv4 or IPv6) in its main table: name the interface instead", NodeDefault)
}

// isDefault reports whether dst is a default route's (nil in older
// netlink versions, 0.0.0.0/0 or ::/0 in newer ones).
func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0
}

// linkOf is a route's output interface; for a multipath route, its first
// hop's.
func linkOf(r netlink.Route) int {
	if r.LinkIndex > 0 {
		return r.LinkIndex
	}
	for _, nh := range r.MultiPath {
		if nh.LinkIndex > 0 {
			return nh.LinkIndex
		}
	}
	return 0
}

// resolveNodeInterface turns interface node:default into the name of the
// default route's interface, before the policy decides on it (a rule's
// interfaces match the real name). The record's identity keeps that name.
func (d *Driver) resolveNodeInterface(vr *volumeRequest) error {
	if vr.load.Interface != NodeDefault {
		return nil
	}
	name, err := d.defaultRoute()
	if err != nil {
		return err
	}
	vr.load.Interface = name
	return nil
}
