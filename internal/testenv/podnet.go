package testenv

import (
	"os"
	"testing"

	"github.com/vishvananda/netlink"
)

// NewPodVeth is NewVeth with the peer renamed to name inside its
// namespace, as a pod's sandbox names its interface (eth0) whatever the
// node's interfaces are called. Two of them model a pod's sandbox and its
// replacement: the same interface name in two namespaces.
func NewPodVeth(t testing.TB, name string) *Veth {
	t.Helper()
	v := NewVeth(t)
	err := inNetns(v.nsFD, func() error {
		p, err := netlink.LinkByName(v.Peer)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetDown(p); err != nil {
			return err
		}
		if err := netlink.LinkSetName(p, name); err != nil {
			return err
		}
		// No IPv6: its neighbour discovery would send frames of its own
		// and blur counts of the frames a test sends. /proc/sys/net is
		// the namespace of the thread that opens it.
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0); err != nil && !os.IsNotExist(err) {
			return err
		}
		return netlink.LinkSetUp(p)
	})
	if err != nil {
		t.Fatalf("renaming %s to %s in its namespace: %v", v.Peer, name, err)
	}
	v.Peer = name
	return v
}
