// Package libxdpfig carries the figures of test/vm's TestLibxdpSideBySide
// (bpfmount against libxdp in one VM boot) from the test, which runs once
// per kernel inside a VM and can only print, to the command that writes
// them into docs/benchmarks.md as one section with a column per kernel.
package libxdpfig

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Marker starts the line that carries one kernel's figures as JSON.
const Marker = "libxdp-figures "

// Figures are one kernel's measurements.
type Figures struct {
	Kernel string `json:"kernel"`
	// Repeat is BPF_PROG_TEST_RUN's repeat count per measurement, Rounds
	// the interleaved rounds of which the best counts.
	Repeat int     `json:"repeat"`
	Rounds int     `json:"rounds"`
	Frame  []Frame `json:"frame"`
	// AddRounds is the number of rounds of adding the k-th program.
	AddRounds int   `json:"addRounds"`
	Add       []Add `json:"add"`
}

// Frame is the per-frame cost of the attached dispatcher with Members
// members, each side's.
type Frame struct {
	Members    int     `json:"members"`
	BpfmountNS float64 `json:"bpfmountNs"`
	LibxdpNS   float64 `json:"libxdpNs"`
}

// Add is the p50 latency of adding the K-th program, whole processes.
type Add struct {
	K          int     `json:"k"`
	BpfmountMS float64 `json:"bpfmountMs"`
	LibxdpMS   float64 `json:"libxdpMs"`
}

// Line is f as the line the test prints.
func (f Figures) Line() string {
	b, err := json.Marshal(f)
	if err != nil {
		panic(err) // plain structs of numbers and strings always marshal
	}
	return Marker + string(b)
}

// Parse finds the figures lines in a test run's output (go test -v adds a
// file:line prefix, run.sh a kernel prefix), in order.
func Parse(r io.Reader) ([]Figures, error) {
	var out []Figures
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		_, js, ok := strings.Cut(sc.Text(), Marker)
		if !ok {
			continue
		}
		var f Figures
		if err := json.Unmarshal([]byte(js), &f); err != nil {
			return nil, fmt.Errorf("a %q line is not JSON: %w", strings.TrimSpace(Marker), err)
		}
		if f.Kernel == "" || len(f.Frame) == 0 || len(f.Add) == 0 {
			return nil, fmt.Errorf("a %q line lacks the kernel or its figures", strings.TrimSpace(Marker))
		}
		out = append(out, f)
	}
	return out, sc.Err()
}
