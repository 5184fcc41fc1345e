package state

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/loader"
)

func benchRecord() *Record {
	return &Record{
		Version: Version, VolumeID: "csi-0123456789abcdef0123456789abcdef",
		TargetPath:  "/var/lib/kubelet/pods/0b4e6f2a-1111-2222-3333-444455556666/volumes/kubernetes.io~csi/counter/mount",
		StagingPath: "/run/bpfmount/mounts/csi-0123456789abcdef0123456789abcdef", ReadOnly: true, MountGroup: "65534",
		Attributes: map[string]string{"image": "registry.example/bpf/xdp-counter:v1", "interface": "eth0", "priority": "50"},
		Image:      "registry.example/bpf/xdp-counter:v1",
		Identity:   loader.Identity{Digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", Program: "xdp_stats", Hook: loader.HookXDP, Interface: "eth0", Priority: 50, ProceedOn: []string{"dispatcher_return", "pass"}, XDPMode: "auto"},
		Key:        "0123456789abcdef01234567", ProgramID: 1234, Maps: []string{"xdp_stats_map"},
		Pod:     Pod{Name: "reader", Namespace: "net-observability", UID: "0b4e6f2a-1111-2222-3333-444455556666", ServiceAccount: "default"},
		Created: time.Unix(1700000000, 0).UTC(),
	}
}

func BenchmarkRecordEncode(b *testing.B) {
	r := benchRecord()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := json.Marshal(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRecordDecode(b *testing.B) {
	data, _ := json.Marshal(benchRecord())
	b.ReportAllocs()
	for b.Loop() {
		var r Record
		if err := Decode(data, &r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRecordPut(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	r := benchRecord()
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Put(r); err != nil {
			b.Fatal(err)
		}
	}
}
