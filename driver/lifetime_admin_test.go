package driver_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/loader"
)

// The admin listing says a volume's lifetime: its name, keepAttached, the
// maps an upgrade reset, and the name a map-only volume reads.
func TestListVolumesLifetimes(t *testing.T) {
	named := &state.Record{
		Version: 1, VolumeID: "v-named", TargetPath: "/run/bpf/a", Image: "oci:/srv/a:v2",
		Attributes: map[string]string{"image": "oci:/srv/a:v2", "name": "fw-edge", "keepAttached": "30s"},
		Identity:   loader.Identity{Digest: "sha256:aa", Program: "p", Hook: "xdp", Interface: "eth0"},
		Key:        "k1", ProgramID: 9, KeepAttached: 30 * time.Second, ResetMaps: []string{"counts"},
	}
	reader := &state.Record{
		Version: 1, VolumeID: "v-reader", TargetPath: "/run/bpf/b", ReadOnly: true,
		Attributes: map[string]string{"from": "fw-edge"},
		Identity:   loader.Identity{Digest: "sha256:aa", Program: "p", Hook: "xdp", Interface: "eth0"},
		ProgramID:  9, Maps: []string{"counts"},
	}
	_, _, client := newAdminDriver(t, func(store *state.Store) {
		for _, r := range []*state.Record{named, reader} {
			if err := store.Put(r); err != nil {
				t.Fatal(err)
			}
		}
	})
	resp, err := client.ListVolumes(context.Background())
	if err != nil || len(resp.Volumes) != 2 {
		t.Fatalf("ListVolumes = %+v, %v", resp, err)
	}
	n, r := resp.Volumes[0], resp.Volumes[1]
	if n.Name != "fw-edge" || n.KeepAttached != "30s" || !slices.Equal(n.ResetMaps, []string{"counts"}) || n.From != "" {
		t.Errorf("named volume listed as %+v", n)
	}
	if r.From != "fw-edge" || r.Name != "" || r.KeepAttached != "" {
		t.Errorf("map-only volume listed as %+v", r)
	}
}
