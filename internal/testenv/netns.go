package testenv

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Veth is a veth pair: Host stays in the test's network namespace (where
// the driver attaches programs), Peer lives in a namespace of its own from
// which the test sends frames to Host.
type Veth struct {
	Host    string
	Peer    string
	nsFD    int
	PeerMAC net.HardwareAddr
	HostMAC net.HardwareAddr
}

// NewVeth creates a veth pair with a random name and a fresh, unnamed
// network namespace for its peer. Both go when the test ends: deleting the
// host end deletes the pair, and closing the last reference to an unnamed
// namespace destroys it, so nothing appears under /run/netns.
func NewVeth(t testing.TB) *Veth {
	t.Helper()
	suffix := randomHex(4)
	v := &Veth{Host: "bpfm" + suffix, Peer: "bpfp" + suffix}
	ns, err := newNetns()
	if err != nil {
		t.Fatalf("creating a network namespace: %v", err)
	}
	v.nsFD = ns
	t.Cleanup(func() { unix.Close(ns) })

	la := netlink.NewLinkAttrs()
	la.Name = v.Host
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: v.Peer}); err != nil {
		t.Fatalf("creating veth %s: %v", v.Host, err)
	}
	t.Cleanup(func() { v.Delete() })
	host, err := netlink.LinkByName(v.Host)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := netlink.LinkByName(v.Peer)
	if err != nil {
		t.Fatal(err)
	}
	v.HostMAC = host.Attrs().HardwareAddr
	v.PeerMAC = peer.Attrs().HardwareAddr
	if err := netlink.LinkSetNsFd(peer, ns); err != nil {
		t.Fatalf("moving %s into the test namespace: %v", v.Peer, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		t.Fatal(err)
	}
	err = inNetns(ns, func() error {
		p, err := netlink.LinkByName(v.Peer)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(p)
	})
	if err != nil {
		t.Fatalf("bringing %s up: %v", v.Peer, err)
	}
	return v
}

// NetnsPath is a path that opens the peer's network namespace, as a pod's
// netns path does, for as long as the test runs.
func (v *Veth) NetnsPath() string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), v.nsFD) }

// Delete removes the pair (idempotent): what a pod's network going away
// does to its interface.
func (v *Veth) Delete() {
	if l, err := netlink.LinkByName(v.Host); err == nil {
		netlink.LinkDel(l)
	}
}

// Send sends n Ethernet frames of size bytes from the peer to the host end.
// The frames carry an experimental EtherType, so no stack answers them; the
// host end receives them, which is all an XDP or tc ingress program needs.
func (v *Veth) Send(n, size int) error { return v.SendSeq(0, n, size) }

// SendSeq is Send with the frames numbered from start (big-endian, right
// after the Ethernet header).
func (v *Veth) SendSeq(start uint32, n, size int) error {
	if size < 60 {
		size = 60
	}
	return inNetns(v.nsFD, func() error {
		ifc, err := net.InterfaceByName(v.Peer)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		addr := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6}
		copy(addr.Addr[:], v.HostMAC)
		frame := make([]byte, size)
		copy(frame[0:6], v.HostMAC)
		copy(frame[6:12], v.PeerMAC)
		binary.BigEndian.PutUint16(frame[12:14], 0x88b5) // IEEE local experimental
		for i := 0; i < n; i++ {
			binary.BigEndian.PutUint32(frame[14:18], start+uint32(i))
			if err := unix.Sendto(fd, frame, 0, addr); err != nil {
				return fmt.Errorf("sending frame %d: %w", i, err)
			}
		}
		return nil
	})
}

// newNetns creates an unnamed network namespace and returns a file
// descriptor holding it, without moving the calling thread.
func newNetns() (int, error) {
	fd := -1
	err := onNetnsThread(func() error { return unix.Unshare(unix.CLONE_NEWNET) }, func() (err error) {
		fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	})
	return fd, err
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
