package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// Only a namespace that is gone (its path is, is no namespace, or is
// another one) lets its pod's chain be pruned: an error that tells
// nothing keeps it, since pruning detaches the dispatcher.
func TestNetnsGone(t *testing.T) {
	const ino = 4026532000
	for _, tc := range []struct {
		what    string
		cur     uint64
		err     error
		gone    bool
		wantErr bool
	}{
		{"same namespace", ino, nil, false, false},
		{"another namespace", ino + 1, nil, true, false},
		{"path gone", 0, fault.Errorf(fault.Precondition, "network namespace x does not exist: %w", os.ErrNotExist), true, false},
		{"not a namespace", 0, fault.Errorf(fault.Invalid, "x is not a network namespace"), true, false},
		{"permission denied", 0, fmt.Errorf("inspecting network namespace x: %w", syscall.EACCES), false, true},
		{"I/O error", 0, fmt.Errorf("inspecting network namespace x: %w", syscall.EIO), false, true},
	} {
		gone, err := netnsGone("/var/run/netns/x", ino, func(string) (uint64, error) { return tc.cur, tc.err })
		if gone != tc.gone || (err != nil) != tc.wantErr {
			t.Errorf("%s: gone %v, err %v; want gone %v, error %v", tc.what, gone, err, tc.gone, tc.wantErr)
		}
	}
	// netnsInode's own error for a missing path is one netnsGone takes
	// as gone.
	_, err := netnsInode(filepath.Join(t.TempDir(), "absent"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netnsInode of a missing path: %v, want fs.ErrNotExist wrapped", err)
	}
}
