// Package counter reads the example XDP counter's map, xdp_stats_map, from
// its pin: the way a pod reads it through its bpfmount volume.
package counter

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/deploy/examples/xdp-counter/bpf"
)

// Counts are the frames and bytes the interface received.
type Counts struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Read opens the pinned map read-only and sums its per-CPU values. Opening
// a pin needs CAP_BPF (where unprivileged BPF is disabled) and read
// permission on the pin file.
func Read(path string) (Counts, error) {
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return Counts{}, fmt.Errorf("opening %s: %w", path, err)
	}
	defer m.Close()
	var perCPU []bpf.XdpcounterDatarec
	if err := m.Lookup(uint32(0), &perCPU); err != nil {
		return Counts{}, fmt.Errorf("reading %s: %w", path, err)
	}
	var c Counts
	for _, r := range perCPU {
		c.Packets += r.RxPackets
		c.Bytes += r.RxBytes
	}
	return c, nil
}
