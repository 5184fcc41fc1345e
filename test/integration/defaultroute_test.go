package integration

import (
	"errors"
	"net"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/defaultroute"
	"github.com/bpfmount/bpfmount/internal/testenv"
)

// The default route's interface on the real kernel, in a network
// namespace the test makes: none, then IPv6 only, then IPv4 (preferred),
// then the lower metric of two.
func TestDefaultRouteInterface(t *testing.T) {
	testenv.RequireRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New() // also enters it
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err) // the thread stays locked: it is in the wrong namespace
	}
	runtime.UnlockOSThread()
	defer orig.Close()
	defer ns.Close()                                      // the namespace goes with its last handle
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE) // the VMs' kernels may lack the other families
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	if _, err := defaultroute.Interface(h); !errors.Is(err, defaultroute.ErrNone) {
		t.Fatalf("no default route: got %v", err)
	}
	// veth pairs, both ends in the namespace: kernels without the dummy
	// driver have veth.
	dummy := func(name, cidr string) netlink.Link {
		t.Helper()
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
			t.Fatal(err)
		}
		if peer, err := h.LinkByName(name + "p"); err != nil || h.LinkSetUp(peer) != nil {
			t.Fatalf("setting up the peer of %s: %v", name, err)
		}
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		addr, _ := netlink.ParseAddr(cidr)
		addr.Flags = 0x80 // IFA_F_NODAD: the IPv6 address is usable at once
		if err := h.AddrAdd(l, addr); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	route := func(l netlink.Link, gw string, metric int) {
		t.Helper()
		if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw), Priority: metric}); err != nil {
			t.Fatal(err)
		}
	}
	v6 := dummy("dflt6", "fd00::1/64")
	route(v6, "fd00::2", 0)
	if name, err := defaultroute.Interface(h); err != nil || name != "dflt6" {
		t.Fatalf("IPv6 only: %q %v", name, err)
	}
	a := dummy("dflta", "10.99.0.1/24")
	b := dummy("dfltb", "10.98.0.1/24")
	route(a, "10.99.0.2", 200)
	if name, err := defaultroute.Interface(h); err != nil || name != "dflta" {
		t.Fatalf("IPv4 and IPv6: %q %v", name, err)
	}
	route(b, "10.98.0.2", 100)
	if name, err := defaultroute.Interface(h); err != nil || name != "dfltb" {
		t.Fatalf("two IPv4 default routes: %q %v", name, err)
	}
}
