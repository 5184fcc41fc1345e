//go:build !bpfmount_cli

package main

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// runs runs prog once and returns its run count.
func runs(t *testing.T, prog *ebpf.Program) uint64 {
	t.Helper()
	if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
		t.Fatal(err)
	}
	st, err := prog.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st.RunCount
}

func TestEnableRunStats(t *testing.T) {
	if c := (&serveOptions{programStats: false}).enableRunStats(); c != nil {
		c.Close()
		t.Fatal("--program-stats=false enabled run-time statistics")
	}
	if os.Geteuid() != 0 {
		t.Skip("BPF_ENABLE_STATS needs root")
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, License: "MIT",
		Instructions: asm.Instructions{asm.LoadImm(asm.R0, 0, asm.DWord), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	c := (&serveOptions{programStats: true}).enableRunStats()
	if c == nil {
		t.Fatal("run-time statistics not enabled as root")
	}
	first := runs(t, prog)
	if second := runs(t, prog); second != first+1 {
		t.Errorf("run count went from %d to %d over one run while statistics are held enabled", first, second)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}
