package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"testing"
)

// profiler takes CPU, allocation and blocking profiles of the daemon's
// side of publish/unpublish. The daemon runs in the test process
// (testenv), so the profiles also hold the test's gRPC client; the views
// below focus on the driver's calls. BPFMOUNT_BENCH_PROFILES keeps the files.
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

const (
	// allocRate samples one allocation per 4 KiB during a profile (the
	// default, 512 KiB, sees too few of a hundred calls' allocations).
	allocRate = 4096
	// blockRate samples blocking events of about 10 µs and more.
	blockRate = 10_000
)

// around profiles fn. The allocation, blocking and mutex profiles count
// from the start of the process, so each is the difference between the
// profile written before fn and the one written after.
func (p *profiler) around(t *testing.T, name string, fn func()) {
	t.Helper()
	oldRate := runtime.MemProfileRate
	runtime.MemProfileRate = allocRate
	runtime.SetBlockProfileRate(blockRate)
	oldMutex := runtime.SetMutexProfileFraction(1)
	defer func() {
		runtime.MemProfileRate = oldRate
		runtime.SetBlockProfileRate(0)
		runtime.SetMutexProfileFraction(oldMutex)
	}()
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
	lookup := func(kind string) func(*os.File) error {
		return func(w *os.File) error {
			if kind == "allocs" {
				runtime.GC()
			}
			return pprof.Lookup(kind).WriteTo(w, 0)
		}
	}
	kinds := []string{"allocs", "block", "mutex"}
	for _, k := range kinds {
		write(name+"."+k+".base.pprof", lookup(k))
	}
	cpu, err := os.Create(filepath.Join(p.dir, name+".cpu.pprof"))
	if err != nil {
		t.Fatal(err)
	}
	defer cpu.Close()
	tr, err := os.Create(filepath.Join(p.dir, name+".trace"))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := pprof.StartCPUProfile(cpu); err != nil {
		t.Fatal(err)
	}
	// The execution trace sees what CPU profiles cannot: time spent
	// waiting in system calls (go tool trace -pprof=syscall).
	if err := trace.Start(tr); err != nil {
		t.Fatal(err)
	}
	fn()
	trace.Stop()
	pprof.StopCPUProfile()
	for _, k := range kinds {
		write(name+"."+k+".pprof", lookup(k))
	}
	p.names = append(p.names, name)
}

// top runs `go tool pprof -top` with args and keeps the first n entries.
func top(n int, args ...string) string {
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

// syscallTop is the top of the execution trace's system call view (time
// from entering a system call to leaving it, on CPU or not) of the
// driver's calls; base names the profile's files.
func syscallTop(base string) string {
	out, err := exec.Command("go", "tool", "trace", "-pprof=syscall", base+".trace").Output()
	if err != nil {
		return fmt.Sprintf("go tool trace failed: %v", err)
	}
	if err := os.WriteFile(base+".syscall.pprof", out, 0o644); err != nil {
		return err.Error()
	}
	return top(20, "-cum", driverCalls, plumbing, base+".syscall.pprof")
}

const (
	// driverCalls keeps the samples of the driver's CSI calls.
	driverCalls = `-focus=bpfmount/driver\.\(\*Driver\)\.Node`
	// plumbing hides the frames every sample shares (gRPC, the CSI
	// handlers, the runtime) and the profiler's own work.
	plumbing = `-hide=^runtime\.|^syscall\.|internal/runtime|^google\.golang\.org/grpc|csi\._Node|driver\.logCalls|runtime/pprof|compress/flate`
)

// report formats the profiles' top entries for docs/benchmarks.md.
func (p *profiler) report(what map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `Profiled in the test process with runtime/pprof: CPU (100 Hz; cumulative,
the driver's calls and below; kernel time in system calls counts as CPU of
the calling function), allocated bytes (one sample per %d bytes) and, for
the burst, time blocked (events of about %d µs and more); and, from an
execution trace taken at the same time, the time the driver's calls spent
in system calls, which is where a publish waits. The test's gRPC
client is in the same process; the CPU and blocking views keep the
driver's calls. A publish spends most of its time waiting in the kernel,
off CPU, so the CPU profiles are short.
`, allocRate, blockRate/1000)
	for _, name := range p.names {
		file := func(kind string) string { return filepath.Join(p.dir, name+"."+kind+".pprof") }
		base := func(kind string) string { return "-base=" + filepath.Join(p.dir, name+"."+kind+".base.pprof") }
		fmt.Fprintf(&b, "\n### %s: CPU, cumulative\n\n```\n%s\n```\n", what[name], top(30, "-cum", driverCalls, plumbing, file("cpu")))
		fmt.Fprintf(&b, "\n### %s: allocated bytes, flat\n\n```\n%s\n```\n", what[name],
			top(15, "-sample_index=alloc_space", `-ignore=runtime/pprof|test/bench\.\(\*profiler\)`, base("allocs"), file("allocs")))
		if strings.HasPrefix(name, "burst") {
			fmt.Fprintf(&b, "\n### %s: time blocked, cumulative\n\n```\n%s\n```\n", what[name],
				top(20, "-cum", "-sample_index=delay", driverCalls, plumbing, base("block"), file("block")))
		}
		if name != "at500" {
			fmt.Fprintf(&b, "\n### %s: time in system calls (execution trace), cumulative\n\n```\n%s\n```\n", what[name],
				syscallTop(filepath.Join(p.dir, name)))
		}
	}
	fmt.Fprintf(&b, "\nReproduce: `sudo BPFMOUNT_BENCH_PROFILES=/tmp/prof make bench`, then for example `go tool pprof -top -cum /tmp/prof/at500.cpu.pprof`.\n")
	return b.String()
}
