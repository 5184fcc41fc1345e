package testenv

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// SendToPeer sends n frames from the host end of v to its peer (a pod's
// eth0 in the pod-interface tests), where an XDP program on the peer sees
// them arrive. Their EtherType is IEEE's local experimental one, so no
// stack answers them.
func (v *Veth) SendToPeer(t testing.TB, n int) {
	t.Helper()
	ifc, err := net.InterfaceByName(v.Host)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	addr := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6}
	copy(addr.Addr[:], v.PeerMAC)
	frame := make([]byte, 64)
	copy(frame[0:6], v.PeerMAC)
	copy(frame[6:12], v.HostMAC)
	binary.BigEndian.PutUint16(frame[12:14], 0x88b5)
	for i := 0; i < n; i++ {
		if err := unix.Sendto(fd, frame, 0, addr); err != nil {
			t.Fatalf("sending frame %d: %v", i, err)
		}
	}
}

// PeerXDPProgram is the ID of the XDP program on v's peer (named eth0 in
// its namespace, as a pod's interface), or 0.
func (v *Veth) PeerXDPProgram(t testing.TB) uint32 {
	t.Helper()
	ns, err := netns.GetFromPath(v.NetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		return x.ProgId
	}
	return 0
}
