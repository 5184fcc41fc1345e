package loader

import (
	"testing"

	"github.com/cilium/ebpf"
)

func TestEstimateMapBytes(t *testing.T) {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name            string
		typ             ebpf.MapType
		key, value, max uint32
		want            uint64
	}{
		{"array", ebpf.Array, 4, 16, 256, 256 * 20},
		{"hash", ebpf.Hash, 8, 8, 1024, 1024 * 16},
		// Per-CPU values are 8-byte aligned, one per possible CPU.
		{"percpu array", ebpf.PerCPUArray, 4, 12, 10, 10 * (4 + 16*uint64(cpus))},
		// A ring buffer's max entries is its size in bytes.
		{"ringbuf", ebpf.RingBuf, 0, 0, 1 << 16, 1 << 16},
	} {
		if got := EstimateMapBytes(c.typ, c.key, c.value, c.max); got != c.want {
			t.Errorf("%s: EstimateMapBytes = %d, want %d", c.name, got, c.want)
		}
	}
}
