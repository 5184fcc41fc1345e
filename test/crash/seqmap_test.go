package crash

import (
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

// seqSeen reads an xdp_seq program's seq_map through a volume: how many
// numbered frames it saw, and how many times a number did not follow the
// previous one.
func seqSeen(t *testing.T, target string) (count, gaps uint64) {
	t.Helper()
	val := testenv.MapValue(t, filepath.Join(target, "seq_map"))
	return binary.NativeEndian.Uint64(val[0:8]), binary.NativeEndian.Uint64(val[8:16])
}
