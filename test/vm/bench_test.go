package vm

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/loader/dispatcher"
	"github.com/bpfmount/bpfmount/test/vm/progs"
)

// TestDispatcherCost measures, with BPF_PROG_TEST_RUN on a 64-byte frame,
// the per-frame cost of a program alone and of a dispatcher running 1, 5
// and 10 copies of it, all in one run on one kernel; and how long a chain
// change takes when the chain has k-1 members and gets its k-th. Under
// qemu's TCG only the ratios mean anything. It runs when VMTEST_BENCH is
// set (`make bench-vm`); VMTEST_BENCH_REPEAT sets the repeat count of each
// test run (default 1000000).
func TestDispatcherCost(t *testing.T) {
	requireVM(t)
	if os.Getenv("VMTEST_BENCH") == "" {
		t.Skip("skipping: set VMTEST_BENCH=1 (make bench-vm) to measure the dispatcher's cost")
	}
	repeat := benchRepeat(t)
	var report strings.Builder
	fmt.Fprintf(&report, "\nkernel %s, %d test runs per measurement, best of %d interleaved rounds, 64-byte frame\n", os.Getenv("VMEXEC_KERNEL"), repeat, benchRounds)
	for _, h := range []hookCase{xdpCase, tcIngressCase} {
		t.Run(h.name, func(t *testing.T) { measureHook(t, h, repeat, &report) })
	}
	t.Log(report.String())
}

func measureHook(t *testing.T, h hookCase, repeat int, report *strings.Builder) {
	root := pinDir(t)
	{
		prog := progs.MembersProgXdpCount
		if h.hook == dispatcher.TC {
			prog = progs.MembersProgTcCount
		}
		alone := loadPlain(t, prog, h.proceed)
		var ms []*member
		for i := 1; i <= dispatcher.Slots; i++ {
			ms = append(ms, loadMember(t, h, prog, uint8(i), h.proceed, i, h.mask(h.proceed)))
		}
		// One chain per size, on its own interface, all built up front (a
		// member can fill slots of several dispatchers at once), so that
		// the measurements can be interleaved: under emulation, and on a
		// busy host, the speed drifts, and rounds spread the drift over
		// every configuration alike.
		sizes := []int{1, 5, 10}
		runs := []*ebpf.Program{alone}
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
		best := bestOf(t, runs, repeat, benchRounds)
		base := best[0]
		fmt.Fprintf(report, "%-10s %-22s %8.1f ns/frame  1.00x\n", h.name, "program alone", ns(base))
		for i, k := range sizes {
			d := best[i+1]
			fmt.Fprintf(report, "%-10s %-22s %8.1f ns/frame  %.2fx\n", h.name, fmt.Sprintf("dispatcher + %d", k), ns(d), float64(d)/float64(base))
		}
		perSlot := (best[3] - best[1]) / 9
		fmt.Fprintf(report, "%-10s %-22s %8.1f ns/frame  (%.2fx the program alone)\n", h.name, "each further member", ns(perSlot), float64(perSlot)/float64(base))

		host, _ := vethPair(t)
		c, err := dispatcher.Open(h.target(host), root+"/latency")
		if err != nil {
			t.Fatal(err)
		}
		defer setChain(c)

		// The latency of the k-th member's change: build a revision of k
		// members and swap it in.
		const rounds = 10
		lat := make([][]time.Duration, dispatcher.Slots+1)
		for r := 0; r < rounds; r++ {
			for k := 1; k <= dispatcher.Slots; k++ {
				start := time.Now()
				if err := c.Update([]dispatcher.Member{ms[k-1].Member}, nil); err != nil {
					t.Fatal(err)
				}
				lat[k] = append(lat[k], time.Since(start))
			}
			if err := setChain(c); err != nil {
				t.Fatal(err)
			}
		}
		fmt.Fprintf(report, "%-10s change adding the k-th member (load dispatcher, attach k members, swap), %d rounds:\n", h.name, rounds)
		for k := 1; k <= dispatcher.Slots; k++ {
			slices.Sort(lat[k])
			fmt.Fprintf(report, "%-10s   k=%-2d p50 %6.2f ms  max %6.2f ms\n", h.name, k, ms64(lat[k][len(lat[k])/2]), ms64(lat[k][len(lat[k])-1]))
		}
	}
}

func ns(d time.Duration) float64   { return float64(d.Nanoseconds()) }
func ms64(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// loadPlain loads a counting program as a normal XDP or tc program.
func loadPlain(t testing.TB, prog string, verdict int32) *ebpf.Program {
	t.Helper()
	spec, err := progs.LoadMembers()
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.Variables[progs.MembersVarVerdict].Set(verdict); err != nil {
		t.Fatal(err)
	}
	for name := range spec.Programs {
		if name != prog {
			delete(spec.Programs, name)
		}
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { coll.Close() })
	return coll.Programs[prog]
}

// benchRepeat is the repeat count of each test run of a measurement:
// VMTEST_BENCH_REPEAT, or a million.
func benchRepeat(t testing.TB) int {
	t.Helper()
	v := os.Getenv("VMTEST_BENCH_REPEAT")
	if v == "" {
		return 1_000_000
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// benchRounds is how many times each configuration is measured; the
// best round counts.
const benchRounds = 5

// bestOf measures each program rounds times, in turn, with
// BPF_PROG_TEST_RUN, and returns each one's lowest time per run.
func bestOf(t testing.TB, ps []*ebpf.Program, repeat, rounds int) []time.Duration {
	t.Helper()
	in := frame(net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2})
	best := make([]time.Duration, len(ps))
	for i := range best {
		best[i] = time.Duration(1<<63 - 1)
	}
	for r := 0; r < rounds; r++ {
		for i, p := range ps {
			_, d, err := p.Benchmark(in, repeat, nil)
			if err != nil {
				t.Fatal(err)
			}
			best[i] = min(best[i], d)
		}
	}
	return best
}
