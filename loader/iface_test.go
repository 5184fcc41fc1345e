package loader

import (
	"net"
	"testing"
)

// ifindex asks for one interface and agrees with the standard library.
func TestIfindexAgreesWithNet(t *testing.T) {
	ifcs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifc := range ifcs {
		idx, err := ifindex(ifc.Name)
		if err != nil || idx != ifc.Index {
			t.Errorf("ifindex(%q) = %d, %v; want %d", ifc.Name, idx, err, ifc.Index)
		}
	}
	for _, name := range []string{"", "bpfmnope0", "a-name-longer-than-ifnamsiz"} {
		if idx, err := ifindex(name); err == nil {
			t.Errorf("ifindex(%q) = %d, want an error", name, idx)
		}
	}
}

// The interface lookup of every direct publish: one ioctl, against the
// standard library's dump of every link (which grows with the pods on a
// node).
func BenchmarkIface(b *testing.B) {
	l := &Loader{node: "bench"}
	b.Run("ifindex", func(b *testing.B) {
		for b.Loop() {
			if _, err := l.iface("lo"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("net.InterfaceByName", func(b *testing.B) {
		for b.Loop() {
			if _, err := net.InterfaceByName("lo"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
