package driver

import (
	"context"
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// node:default resolves before the policy decides, the policy sees the
// real name, and the record keeps it beside the attribute as written.
func TestNodeDefaultResolvedAtPublish(t *testing.T) {
	attrs := podAttrs("net")
	attrs[AttrInterface] = NodeDefault
	f := newTestDriver(t, mustPolicy(t, `rules:
- name: net
  namespaces: ["net"]
  images: ["registry.example/bpf/*"]
  interfaces: ["ens*"]
`))
	f.d.defaultRoute = func() (string, error) { return "ens5", nil }
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, attrs)); err != nil {
		t.Fatal(err)
	}
	rec := f.store.records["vol-1"]
	if rec == nil || rec.Identity.Interface != "ens5" || rec.Attributes[AttrInterface] != NodeDefault {
		t.Fatalf("record %+v", rec)
	}
	// Idempotent: the same request again is already published.
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, attrs)); err != nil {
		t.Fatal(err)
	}

	f.d.defaultRoute = func() (string, error) { return "eth0", nil }
	_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-2", testTarget+"2", attrs))
	wantCode(t, err, codes.PermissionDenied, `on "eth0"`)

	f.d.defaultRoute = func() (string, error) {
		return "", fault.Errorf(fault.Precondition, "this node has no default route")
	}
	_, err = f.d.NodePublishVolume(context.Background(), publishReq("vol-3", testTarget+"3", attrs))
	wantCode(t, err, codes.FailedPrecondition, "no default route")
}

// The default route's interface on the real kernel, in a network
// namespace the test makes: none, then IPv6 only, then IPv4 (preferred),
// then the lower metric of two.
func TestDefaultRouteInterface(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to make a network namespace")
	}
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
	defer ns.Close() // the namespace goes with its last handle
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	if _, err := defaultRouteInterface(h); fault.Of(err) != fault.Precondition {
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
	if name, err := defaultRouteInterface(h); err != nil || name != "dflt6" {
		t.Fatalf("IPv6 only: %q %v", name, err)
	}
	a := dummy("dflta", "10.99.0.1/24")
	b := dummy("dfltb", "10.98.0.1/24")
	route(a, "10.99.0.2", 200)
	if name, err := defaultRouteInterface(h); err != nil || name != "dflta" {
		t.Fatalf("IPv4 and IPv6: %q %v", name, err)
	}
	route(b, "10.98.0.2", 100)
	if name, err := defaultRouteInterface(h); err != nil || name != "dfltb" {
		t.Fatalf("two IPv4 default routes: %q %v", name, err)
	}
}
