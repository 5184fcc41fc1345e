package main

import (
	"strings"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/test/vm/libxdpfig"
)

func TestRenderPutsKernelsSideBySide(t *testing.T) {
	mk := func(k string, scale float64) libxdpfig.Figures {
		return libxdpfig.Figures{Kernel: k, Repeat: 1000000, Rounds: 5, AddRounds: 5,
			Frame: []libxdpfig.Frame{{Members: 1, BpfmountNS: 100 * scale, LibxdpNS: 80}, {Members: 10, BpfmountNS: 600, LibxdpNS: 900}},
			Add:   []libxdpfig.Add{{K: 1, BpfmountMS: 150, LibxdpMS: 120 * scale}}}
	}
	var b strings.Builder
	render(&b, []libxdpfig.Figures{mk("6.1", 1), mk("6.12", 2)}, time.Date(2026, 11, 26, 12, 44, 0, 0, time.UTC), "1.00, 2.00, 3.00")
	doc := b.String()
	for _, want := range []string{
		"## Side by side with libxdp (qemu VMs, Debian 6.1 and 6.12)",
		"2026-11-26 12:44 UTC",
		"1.00, 2.00, 3.00",
		"1000000 times per measurement",
		"| members | 6.1 bpfmount | 6.1 libxdp | 6.1 ratio | 6.12 bpfmount | 6.12 libxdp | 6.12 ratio |",
		"| 1 | 100.0 ns | 80.0 ns | **1.25** | 200.0 ns | 80.0 ns | **2.50** |",
		"| 10 | 600.0 ns | 900.0 ns | **0.67** | 600.0 ns | 900.0 ns | **0.67** |",
		"| 1 | 150.0 ms | 120.0 ms | **1.25** | 150.0 ms | 240.0 ms | **0.62** |",
		"sudo make bench-libxdp",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("section lacks %q:\n%s", want, doc)
		}
	}
	if n := strings.Count(doc, "\n## "); n != 0 || !strings.HasPrefix(doc, "## ") {
		t.Errorf("want exactly one section, got %d more headings", n)
	}
}
