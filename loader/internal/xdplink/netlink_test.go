package xdplink_test

import (
	"errors"
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader/internal/xdplink"
)

func passProgram(t *testing.T) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func id(t *testing.T, p *ebpf.Program) uint32 {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	n, _ := info.ID()
	return uint32(n)
}

// Replace is libxdp's protocol: an attach only to an empty hook, a swap
// only of the expected program, a detach only of the expected program;
// anything else fails with EEXIST and changes nothing. A netlink attach
// stays when every descriptor is closed.
func TestReplaceExpectsTheAttachedProgram(t *testing.T) {
	testenv.RequireRoot(t)
	v := testenv.NewVeth(t)
	ifc, err := net.InterfaceByName(v.Host)
	if err != nil {
		t.Fatal(err)
	}
	a, b := passProgram(t), passProgram(t)
	mode, err := xdplink.AttachNetlink(a, ifc.Index, xdplink.Auto)
	if err != nil {
		t.Fatal(err)
	}
	if xdplink.Owner(ifc.Index) != id(t, a) || xdplink.ModeOf(ifc.Index) != mode {
		t.Fatalf("after the attach: program %d in mode %q, want %d in %q", xdplink.Owner(ifc.Index), xdplink.ModeOf(ifc.Index), id(t, a), mode)
	}
	if _, err := xdplink.AttachNetlink(b, ifc.Index, mode); !xdplink.IsBusy(err) {
		t.Fatalf("attach over an attached program: %v, want busy", err)
	}
	if err := xdplink.Replace(ifc.Index, b, b, mode); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("replace expecting the wrong program: %v, want EEXIST", err)
	}
	if xdplink.Owner(ifc.Index) != id(t, a) {
		t.Fatal("a refused replace changed the attached program")
	}
	if err := xdplink.Replace(ifc.Index, b, a, mode); err != nil {
		t.Fatal(err)
	}
	if xdplink.Owner(ifc.Index) != id(t, b) {
		t.Fatalf("after the replace the interface runs %d, want %d", xdplink.Owner(ifc.Index), id(t, b))
	}
	if err := xdplink.Replace(ifc.Index, nil, a, mode); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("detach expecting the wrong program: %v, want EEXIST", err)
	}
	want := id(t, b)
	b.Close()
	if xdplink.Owner(ifc.Index) != want {
		t.Fatal("closing the last descriptor detached a netlink attach")
	}
	b2, err := ebpf.NewProgramFromID(ebpf.ProgramID(want))
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if err := xdplink.Replace(ifc.Index, nil, b2, mode); err != nil {
		t.Fatal(err)
	}
	if xdplink.Owner(ifc.Index) != 0 {
		t.Fatalf("program %d attached after the detach", xdplink.Owner(ifc.Index))
	}
	if err := xdplink.Replace(ifc.Index, a, nil, "auto"); err == nil {
		t.Fatal("Replace accepted mode auto")
	}
}
