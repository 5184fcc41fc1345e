// Command libxdpdoc turns the output of `test/vm/run.sh bench-libxdp` (the
// figures TestLibxdpSideBySide printed on each kernel) into the section
// "Side by side with libxdp" of docs/benchmarks.md, one column group per
// kernel; make bench-libxdp merges it into the document.
//
//	test/vm/run.sh bench-libxdp | libxdpdoc > section.md
package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/bpfmount/bpfmount/test/vm/libxdpfig"
)

func main() {
	figs, err := libxdpfig.Parse(os.Stdin)
	if err == nil && len(figs) == 0 {
		err = fmt.Errorf("no %q line in the input: did TestLibxdpSideBySide run (VMTEST_BENCH=1, xdp-tools in the VM)?", strings.TrimSpace(libxdpfig.Marker))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "libxdpdoc:", err)
		os.Exit(1)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	render(os.Stdout, figs, time.Now().UTC(), strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], ", "))
}

func render(w io.Writer, figs []libxdpfig.Figures, at time.Time, load string) {
	kernels := make([]string, len(figs))
	for i, f := range figs {
		kernels[i] = f.Kernel
	}
	fmt.Fprintf(w, `## Side by side with libxdp (qemu VMs, Debian %s)

bpfmount against libxdp (Debian bookworm's xdp-tools 1.3.1: libxdp and
`+"`xdp-loader`"+`), both measured in the same VM boot, one boot per kernel, with
the same member program on both sides: `+"`xdp_count`"+` of the VM tests' member
object (count the frame in an array map, return `+"`XDP_PASS`"+`), which
`+"`xdp-loader`"+` loads from the object file (its `+"`verdict`"+` global set to
`+"`XDP_PASS`"+` in the file) and bpfmount from the same object with the global
set at load. The VMs run under qemu's TCG (no KVM), so only the ratios mean
anything; the absolute figures are emulated time. From one run to the
next a single row's ratio can move by more than half (three runs on one
day put the 10-member row on 6.12 at 0.49, 0.86 and 0.94, and adding the
2nd program on 6.1 at 0.62, 1.03 and 1.59): read the trend over the rows
and both kernels, not one row.

Measured %s on this host; load average over 1, 5 and 15 minutes
at the end: %s.

`, strings.Join(kernels, " and "), at.Format("2006-01-02 15:04 MST"), load)
	f0 := figs[0]
	fmt.Fprintf(w, `**Per-frame cost of the attached dispatcher**: chains of 1, 5 and 10
members, each on its own veth: bpfmount's built by its dispatcher package,
libxdp's by `+"`xdp-loader load -m native -P <prio>`"+` once per member. Each
attached dispatcher program (libxdp's found through its pin directory
`+"`dispatch-<ifindex>-<prog id>`"+`) runs a 64-byte frame through
`+"`BPF_PROG_TEST_RUN`"+` %d times per measurement; the configurations are
measured in %d interleaved rounds and the best round counts. A ratio below
1 means bpfmount's dispatcher is cheaper.

`, f0.Repeat, f0.Rounds)
	header(w, "members", kernels, "bpfmount", "libxdp")
	table(w, figs, "ns", func(f libxdpfig.Figures, i int) (int, float64, float64, bool) {
		if i >= len(f.Frame) {
			return 0, 0, 0, false
		}
		return f.Frame[i].Members, f.Frame[i].BpfmountNS, f.Frame[i].LibxdpNS, true
	})
	fmt.Fprintf(w, `
**Latency of adding the k-th program** (k = 1..%d) to one interface, whole
processes: `+"`bpfmount publish --attr image=… --attr program=xdp_count --attr\ninterface=… --attr priority=k`"+` (the client binary alone, built with
`+"`-tags bpfmount_cli`"+`, talking to a `+"`bpfmount serve`"+` process over its
socket) against `+"`xdp-loader load -m native -n xdp_count -P k`"+`, each on its
own veth; %d rounds, each filling the slots with one loader and then the
other, then emptying both; p50 per k. A publish does more than a libxdp
load: besides loading the program, building and swapping a dispatcher
revision with k members, it fetches the image from its (local, cached)
layout, mounts a bpffs for the volume, pins and bind-mounts its maps and
records the volume.

`, len(f0.Add), f0.AddRounds)
	header(w, "k", kernels, "bpfmount publish", "xdp-loader load")
	table(w, figs, "ms", func(f libxdpfig.Figures, i int) (int, float64, float64, bool) {
		if i >= len(f.Add) {
			return 0, 0, 0, false
		}
		return f.Add[i].K, f.Add[i].BpfmountMS, f.Add[i].LibxdpMS, true
	})
	fmt.Fprint(w, `
Reproduce: `+"`sudo make bench-libxdp`"+` (part of `+"`make bench`"+`; it runs
`+"`TestLibxdpSideBySide`"+` in test/vm on each kernel, one VM after the other, and
this command writes the section; `+"`VMTEST_BENCH_REPEAT`"+` changes the repeat
count).
`)
}

// header writes a table header with a bpfmount, other and ratio column per
// kernel.
func header(w io.Writer, first string, kernels []string, ours, theirs string) {
	fmt.Fprintf(w, "| %s |", first)
	for _, k := range kernels {
		fmt.Fprintf(w, " %s %s | %s %s | %s ratio |", k, ours, k, theirs, k)
	}
	fmt.Fprint(w, "\n|---|")
	for range kernels {
		fmt.Fprint(w, "---|---|---|")
	}
	fmt.Fprintln(w)
}

// table writes a row per row of the first kernel's figures: its label,
// then bpfmount's figure, the other loader's and their ratio for each
// kernel (empty cells where a kernel has fewer rows).
func table(w io.Writer, figs []libxdpfig.Figures, unit string, row func(f libxdpfig.Figures, i int) (label int, ours, theirs float64, ok bool)) {
	for i := 0; ; i++ {
		label, _, _, ok := row(figs[0], i)
		if !ok {
			return
		}
		fmt.Fprintf(w, "| %d |", label)
		for _, f := range figs {
			if _, ours, theirs, ok := row(f, i); ok {
				fmt.Fprintf(w, " %.1f %s | %.1f %s | **%.2f** |", ours, unit, theirs, unit, ours/theirs)
			} else {
				fmt.Fprint(w, " | | |")
			}
		}
		fmt.Fprintln(w)
	}
}
