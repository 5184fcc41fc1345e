// Package bench measures bpfmount beside the kernel's own cost and writes
// the host sections of docs/benchmarks.md. It runs only when
// BPFMOUNT_BENCH_OUT names the output file (make bench-host writes it under
// build/bench and merges it into the document with mergedoc); timings never
// gate tests.
package bench

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.RunHelperIfAsked()
	os.Exit(m.Run())
}

// report collects the sections of docs/benchmarks.md.
type report struct {
	sections []string
}

func (r *report) add(title, body string) {
	r.sections = append(r.sections, "## "+title+"\n\n"+strings.TrimSpace(body)+"\n")
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d.Microseconds())/1000) }

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], ", ")
}

func kernelRelease() string {
	var u unix.Utsname
	unix.Uname(&u)
	return unix.ByteSliceToString(u.Release[:])
}

func TestBenchmarkReport(t *testing.T) {
	out := os.Getenv("BPFMOUNT_BENCH_OUT")
	if out == "" {
		t.Skip("set BPFMOUNT_BENCH_OUT (make bench) to run the benchmarks")
	}
	testenv.RequireRoot(t)
	r := &report{}
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	header := fmt.Sprintf(`# bpfmount benchmarks

Written by `+"`make bench`"+`. Its host part (`+"`make bench-host`"+`, test/bench) writes
this header and the sections from "Publish latency" to "Go benchmarks" from
one run on this machine, and figures that compare were measured side by side
in that run; the other sections (VMs, Kubernetes, other tools side by side)
come from their own targets, say where they were measured, and stay as they
are when only the host part runs. Timings never gate tests.

This machine's load is high and varies (two cores shared with other work,
load averages below): only ratios and paired differences from one run mean
much; absolute times move from run to run.

- Date: %s
- Kernel: %s
- CPU: %s × %d
- Go: %s
- Load average (1, 5, 15 min) at start: %s; at the end: @LOADEND@
`, time.Now().UTC().Format("2006-01-02 15:04 UTC"), kernelRelease(), cpu, runtime.NumCPU(), runtime.Version(), loadavg())

	t.Run("publish", func(t *testing.T) { benchPublish(t, r) })
	if os.Getenv("BPFMOUNT_BENCH_ONLY") != "" {
		// A narrowed run (BPFMOUNT_BENCH_ONLY=cgroup: the cgroup_skb
		// cycles of publish alone) writes what it measured and stops.
		if err := os.WriteFile(out, []byte(strings.Join(r.sections, "\n")), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Run("daemon", func(t *testing.T) { benchDaemon(t, r) })
	t.Run("cli", func(t *testing.T) { benchCLI(t, r) })
	t.Run("images", func(t *testing.T) { benchImages(t, r) })

	// The load says how much other work shared the CPUs with this run.
	doc := strings.Replace(header, "@LOADEND@", loadavg(), 1) + "\n" + strings.Join(r.sections, "\n")
	if err := os.WriteFile(out, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", out)
}
