package testenv

import (
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
		return netlink.LinkSetUp(p)
	})
	if err != nil {
		t.Fatalf("renaming %s to %s in its namespace: %v", v.Peer, name, err)
	}
	v.Peer = name
	return v
}
