package crash

import (
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
)

// seqSeen reads an xdp_seq program's seq_map through a volume: how many
// numbered frames it saw, and how many times a number did not follow the
// previous one.
func seqSeen(t *testing.T, target string) (count, gaps uint64) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(target, "seq_map"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var val [24]byte
	if err := m.Lookup(uint32(0), &val); err != nil {
		t.Fatal(err)
	}
	return binary.NativeEndian.Uint64(val[0:8]), binary.NativeEndian.Uint64(val[8:16])
}
