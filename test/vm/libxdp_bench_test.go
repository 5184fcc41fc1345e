package vm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
	"github.com/bpfmount/bpfmount/test/vm/libxdpfig"
	"github.com/bpfmount/bpfmount/test/vm/progs"
)

// TestLibxdpSideBySide measures bpfmount against libxdp (Debian's
// xdp-tools 1.3.1) in one VM boot, with the same member program on both
// sides (xdp_count of the members object, returning XDP_PASS):
//
//   - the per-frame cost of each one's attached XDP dispatcher with 1, 5
//     and 10 members, with BPF_PROG_TEST_RUN on the dispatcher program
//     (libxdp's found through its pins), interleaved rounds, best round;
//   - the latency of adding the k-th program (k = 1..10) as whole
//     processes: `bpfmount publish` (the client alone, talking to a daemon
//     process) against `xdp-loader load`, rounds alternating between them.
//
// Under qemu's TCG only the ratios mean anything. It runs with
// VMTEST_BENCH (`make bench-libxdp`); VMTEST_BENCH_REPEAT sets the repeat
// count of each test run.
func TestLibxdpSideBySide(t *testing.T) {
	requireVM(t)
	if os.Getenv("VMTEST_BENCH") == "" {
		t.Skip("skipping: set VMTEST_BENCH=1 (make bench-libxdp) to measure bpfmount against libxdp")
	}
	requireXDPLoader(t)
	repeat := benchRepeat(t)
	obj := libxdpObject(t)
	var report strings.Builder
	fig := libxdpfig.Figures{Kernel: os.Getenv("VMEXEC_KERNEL"), Repeat: repeat, Rounds: benchRounds}
	fmt.Fprintf(&report, "\nkernel %s\n", fig.Kernel)
	fig.Frame = frameCost(t, obj, repeat, &report)
	fig.AddRounds, fig.Add = addLatency(t, obj, &report)
	t.Log(report.String())
	// The same figures for make bench-libxdp's section (test/vm/cmd/libxdpdoc).
	t.Log(fig.Line())
}

// frameCost builds chains of 1, 5 and 10 members with each loader, each on
// its own veth, and measures every dispatcher in interleaved rounds.
func frameCost(t *testing.T, obj string, repeat int, report *strings.Builder) []libxdpfig.Frame {
	h := xdpCase
	sizes := []int{1, 5, 10}
	var ms []*member
	for i := 1; i <= dispatcher.Slots; i++ {
		ms = append(ms, loadMember(t, h, progs.MembersProgXdpCount, uint8(i), xdpPass, i, h.mask(xdpPass)))
	}
	root := pinDir(t)
	var runs []*ebpf.Program
	for _, k := range sizes {
		host, _ := vethPair(t)
		c, err := dispatcher.Open(h.target(host), fmt.Sprintf("%s/size-%d", root, k))
		if err != nil {
			t.Fatal(err)
		}
		defer setChain(c)
		if err := setChain(c, members(ms[:k]...)...); err != nil {
			t.Fatal(err)
		}
		runs = append(runs, c.Dispatcher())
	}
	for _, k := range sizes {
		host, _ := vethPair(t)
		defer exec.Command(xdpLoader, "unload", "--all", host.Name).Run()
		for i := 1; i <= k; i++ {
			xdpLoaderLoad(t, host.Name, obj, i)
		}
		runs = append(runs, libxdpDispatcher(t, host.Index, k))
	}
	best := bestOf(t, runs, repeat, benchRounds)
	fmt.Fprintf(report, "\nPer-frame cost of the attached XDP dispatcher, BPF_PROG_TEST_RUN on a 64-byte frame, %d runs per measurement, best of %d interleaved rounds; members: xdp_count (count the frame, XDP_PASS)\n\n", repeat, benchRounds)
	fmt.Fprintf(report, "| members | bpfmount | libxdp | bpfmount / libxdp |\n|---|---|---|---|\n")
	var figs []libxdpfig.Frame
	for i, k := range sizes {
		b, l := best[i], best[len(sizes)+i]
		fmt.Fprintf(report, "| %d | %.1f ns | %.1f ns | %.2f |\n", k, ns(b), ns(l), float64(b)/float64(l))
		figs = append(figs, libxdpfig.Frame{Members: k, BpfmountNS: ns(b), LibxdpNS: ns(l)})
	}
	return figs
}

// addLatency times, as whole processes, adding the k-th program to an
// interface: `bpfmount publish` against `xdp-loader load`, in rounds that
// alternate between the two, each round filling all ten slots and emptying
// them again.
func addLatency(t *testing.T, obj string, report *strings.Builder) (int, []libxdpfig.Add) {
	const rounds = 5
	cli := testenv.BuildDaemon(t, "bpfmount_cli")
	p := testenv.NewProcDaemon(t, testenv.BuildDaemon(t, ""))
	p.Start(t)
	img := testenv.LayoutBytes(t, progs.Object(), "members.o", "v1")
	bHost, _ := vethPair(t)
	lHost, _ := vethPair(t)
	defer exec.Command(xdpLoader, "unload", "--all", lHost.Name).Run()
	dir := testenv.ShortTempDir(t)
	verdict := hex32(xdpPass)
	lat := [2][dispatcher.Slots][]time.Duration{} // [bpfmount, libxdp][k-1]
	for r := 0; r < rounds; r++ {
		var targets []string
		for k := 1; k <= dispatcher.Slots; k++ {
			target := filepath.Join(dir, fmt.Sprintf("r%d-k%d", r, k))
			s := time.Now()
			out, err := exec.Command(cli, "publish", "--endpoint", p.Endpoint, "--target", target,
				"--attr", "image="+img, "--attr", "program="+progs.MembersProgXdpCount, "--attr", "interface="+bHost.Name,
				"--attr", "priority="+strconv.Itoa(k), "--attr", "globals=verdict="+verdict).CombinedOutput()
			lat[0][k-1] = append(lat[0][k-1], time.Since(s))
			if err != nil {
				t.Fatalf("bpfmount publish (k=%d): %v\n%s", k, err, out)
			}
			targets = append(targets, target)
		}
		for k := 1; k <= dispatcher.Slots; k++ {
			s := time.Now()
			xdpLoaderLoad(t, lHost.Name, obj, k)
			lat[1][k-1] = append(lat[1][k-1], time.Since(s))
		}
		for _, target := range targets {
			if out, err := exec.Command(cli, "unpublish", "--endpoint", p.Endpoint, "--target", target).CombinedOutput(); err != nil {
				t.Fatalf("bpfmount unpublish: %v\n%s", err, out)
			}
		}
		if out, err := exec.Command(xdpLoader, "unload", "--all", lHost.Name).CombinedOutput(); err != nil {
			t.Fatalf("xdp-loader unload --all: %v\n%s", err, out)
		}
	}
	fmt.Fprintf(report, "\nAdding the k-th XDP program to an interface, whole processes (`bpfmount publish` to a running daemon, `xdp-loader load`), p50 of %d rounds\n\n", rounds)
	fmt.Fprintf(report, "| k | bpfmount publish | xdp-loader load | bpfmount / libxdp |\n|---|---|---|---|\n")
	var figs []libxdpfig.Add
	for k := range dispatcher.Slots {
		b, l := slices.Clone(lat[0][k]), slices.Clone(lat[1][k])
		slices.Sort(b)
		slices.Sort(l)
		bm, lm := b[len(b)/2], l[len(l)/2]
		fmt.Fprintf(report, "| %d | %.1f ms | %.1f ms | %.2f |\n", k+1, ms64(bm), ms64(lm), float64(bm)/float64(lm))
		figs = append(figs, libxdpfig.Add{K: k + 1, BpfmountMS: ms64(bm), LibxdpMS: ms64(lm)})
	}
	return rounds, figs
}

// xdpLoaderLoad adds xdp_count from obj to the interface's libxdp chain at
// priority prio.
func xdpLoaderLoad(t testing.TB, ifname, obj string, prio int) {
	t.Helper()
	out, err := exec.Command(xdpLoader, "load", "-m", "native", "-n", progs.MembersProgXdpCount, "-P", strconv.Itoa(prio), ifname, obj).CombinedOutput()
	if err != nil {
		t.Fatalf("xdp-loader load %s (priority %d): %v\n%s", ifname, prio, err, out)
	}
}

// libxdpDispatcher opens the dispatcher libxdp attached to the interface,
// found by its pin directory dispatch-IFINDEX-PROGID, and checks it holds
// the members expected.
func libxdpDispatcher(t testing.TB, ifindex, members int) *ebpf.Program {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(libxdpDir, fmt.Sprintf("dispatch-%d-*", ifindex)))
	if len(dirs) != 1 {
		t.Fatalf("libxdp dispatcher pins of ifindex %d: %v, want one", ifindex, dirs)
	}
	id, err := strconv.ParseUint(strings.TrimPrefix(filepath.Base(dirs[0]), fmt.Sprintf("dispatch-%d-", ifindex)), 10, 32)
	if err != nil {
		t.Fatalf("libxdp pin %s: %v", dirs[0], err)
	}
	if m, _ := filepath.Glob(filepath.Join(dirs[0], "prog*-prog")); len(m) != members {
		t.Fatalf("libxdp dispatcher %d has %d members, want %d", id, len(m), members)
	}
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// withVerdict returns a copy of the members object whose `verdict` global
// holds v in .rodata, so that a loader which sets no globals (xdp-loader)
// loads the same program bpfmount does with the global set.
func withVerdict(t testing.TB, obj []byte, v int32) []byte {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		if s.Name != progs.MembersVarVerdict || int(s.Section) >= len(f.Sections) {
			continue
		}
		sec := f.Sections[s.Section]
		if sec.Name != ".rodata" || s.Value+4 > sec.Size {
			continue
		}
		out := slices.Clone(obj)
		binary.LittleEndian.PutUint32(out[sec.Offset+s.Value:], uint32(v))
		return out
	}
	t.Fatalf("no %s in the members object's .rodata", progs.MembersVarVerdict)
	return nil
}

// hex32 is a 32-bit value as the globals attribute spells it.
func hex32(v int32) string {
	return fmt.Sprintf("%x", binary.LittleEndian.AppendUint32(nil, uint32(v)))
}
