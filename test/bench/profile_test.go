package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
)

// profiler takes CPU and allocation profiles of the daemon's side of
// publish/unpublish. The daemon runs in the test process (testenv), so the
// profiles also hold the test's gRPC client; the views below say where the
// driver's own work goes. BPFMOUNT_BENCH_PROFILES keeps the files.
type profiler struct {
	dir   string
	names []string
}

func newProfiler(t *testing.T) *profiler {
	dir := os.Getenv("BPFMOUNT_BENCH_PROFILES")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &profiler{dir: dir}
}

// allocRate samples one allocation per 4 KiB during a profile (the default,
// 512 KiB, sees too few of a hundred calls' allocations).
const allocRate = 4096

// around profiles fn: CPU, and allocations as the difference between the
// allocation profiles written before and after it.
func (p *profiler) around(t *testing.T, name string, fn func()) {
	t.Helper()
	old := runtime.MemProfileRate
	runtime.MemProfileRate = allocRate
	defer func() { runtime.MemProfileRate = old }()
	write := func(file string, f func(*os.File) error) {
		out, err := os.Create(filepath.Join(p.dir, file))
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		if err := f(out); err != nil {
			t.Fatal(err)
		}
	}
	heap := func(w *os.File) error { runtime.GC(); return pprof.Lookup("allocs").WriteTo(w, 0) }
	write(name+".allocs.base.pprof", heap)
	cpu, err := os.Create(filepath.Join(p.dir, name+".cpu.pprof"))
	if err != nil {
		t.Fatal(err)
	}
	defer cpu.Close()
	if err := pprof.StartCPUProfile(cpu); err != nil {
		t.Fatal(err)
	}
	fn()
	pprof.StopCPUProfile()
	write(name+".allocs.pprof", heap)
	p.names = append(p.names, name)
}

// top runs `go tool pprof -top` with args and keeps the first n entries.
func top(t *testing.T, n int, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"tool", "pprof", "-top", fmt.Sprintf("-nodecount=%d", n)}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Sprintf("go tool pprof failed: %v\n%s", err, out)
	}
	var keep []string
	started := false
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "flat ") {
			started = true
		}
		if started || strings.HasPrefix(l, "Showing") || strings.HasPrefix(l, "Duration") {
			keep = append(keep, l)
		}
	}
	return strings.TrimRight(strings.Join(keep, "\n"), "\n")
}

// report formats the profiles' top entries for docs/benchmarks.md.
func (p *profiler) report(t *testing.T, calls int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `%d publish/unpublish cycles of the XDP counter (bpfmount alone) with
0 and with 500 volumes on the node, profiled in the test process with
runtime/pprof: CPU (cumulative, the driver's call tree; kernel time in
system calls counts as CPU of the calling function) and allocated bytes
(sampled every %d bytes). The test's gRPC client is in the same process.
`, calls, allocRate)
	for _, name := range p.names {
		cpu := filepath.Join(p.dir, name+".cpu.pprof")
		allocs := filepath.Join(p.dir, name+".allocs.pprof")
		base := filepath.Join(p.dir, name+".allocs.base.pprof")
		fmt.Fprintf(&b, "\n### %s volumes on the node: CPU, cumulative, driver and below\n\n```\n%s\n```\n", strings.TrimPrefix(name, "at"),
			top(t, 25, "-cum", `-focus=bpfmount/driver\.\(\*Driver\)\.Node`, "-hide=^runtime\\.|^syscall\\.|internal/runtime", cpu))
		fmt.Fprintf(&b, "\n### %s volumes on the node: allocated bytes, flat\n\n```\n%s\n```\n", strings.TrimPrefix(name, "at"),
			top(t, 15, "-sample_index=alloc_space", "-base="+base, allocs))
	}
	fmt.Fprintf(&b, "\nReproduce: `sudo BPFMOUNT_BENCH_PROFILES=/tmp/prof make bench`, then `go tool pprof -top /tmp/prof/at500.cpu.pprof`.\n")
	return b.String()
}
