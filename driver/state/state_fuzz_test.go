package state

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/loader"
)

// FuzzDecode: a record file of any content either fails to decode or yields
// a record whose volume ID is safe as a path element, and re-encoding a
// decoded record decodes to the same record.
func FuzzDecode(f *testing.F) {
	good, _ := json.Marshal(&Record{
		Version: Version, VolumeID: "csi-0123abcd", TargetPath: "/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/counter/mount",
		StagingPath: "/run/bpfmount/mounts/csi-0123abcd", Attributes: map[string]string{"image": "r/x:1", "interface": "eth0"},
		Identity: loader.Identity{Digest: "sha256:00", Program: "xdp_stats", Hook: loader.HookXDP, Interface: "eth0", Priority: 50},
		Key:      "0011", Maps: []string{"xdp_stats_map"}, Created: time.Unix(0, 0).UTC(),
	})
	f.Add(good)
	f.Add([]byte(`{"version":1,"volumeID":"../../etc"}`))
	f.Add([]byte(`{"version":2,"volumeID":"v"}`))
	f.Add([]byte(`{"version":1,"volumeID":"v","extra":true}`))
	f.Add([]byte(`{"version":1,"volumeID":"v"} trailing`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Record
		if err := Decode(b, &r); err != nil {
			return
		}
		if !ValidVolumeID(r.VolumeID) {
			t.Fatalf("decoded unsafe volume ID %q", r.VolumeID)
		}
		again, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		var r2 Record
		if err := Decode(again, &r2); err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
	})
}
