package state

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/loader"
)

// The seeds are kept small on purpose: each new interesting input is
// minimized, which costs about len(input)²/2 calls, so large seeds make the
// fuzzer spend its time minimizing instead of exploring (see `make fuzz`).

// FuzzDecode: a record file of any content either fails to decode or yields
// a record whose volume ID is safe as a path element and whose paths are
// absolute and clean, and re-encoding a decoded record decodes to the same
// record.
func FuzzDecode(f *testing.F) {
	good, _ := json.Marshal(&Record{
		Version: Version, VolumeID: "v", TargetPath: "/t", StagingPath: "/s/v",
		Attributes: map[string]string{"image": "r/x:1"},
		Identity:   loader.Identity{Digest: "sha256:00", Program: "p", Hook: loader.HookXDP, Interface: "eth0", ProceedOn: []string{"pass"}},
		Maps:       []string{"m"}, Created: time.Unix(0, 0).UTC(),
	})
	f.Add(good)
	f.Add([]byte(`{"version":1,"volumeID":"../../etc"}`))
	f.Add([]byte(`{"version":2,"volumeID":"v"}`))
	f.Add([]byte(`{"version":1,"volumeID":"v","extra":true}`))
	f.Add([]byte(`{"version":1,"volumeID":"v"} trailing`))
	f.Add([]byte(`{"version":1,"volumeID":"v"}}`))
	f.Add([]byte(`{"version":1,"volumeID":"v","targetPath":"a/../b"}`))
	f.Add([]byte(`{"version":1,"volumeID":"v","created":"2000-01-01T00:00:00+01:00"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Record
		if err := Decode(b, &r); err != nil {
			return
		}
		if !ValidVolumeID(r.VolumeID) {
			t.Fatalf("decoded unsafe volume ID %q", r.VolumeID)
		}
		checkPaths(t, r.TargetPath, r.StagingPath)
		again, err := json.Marshal(&r)
		if err != nil {
			t.Fatalf("decoded record does not encode: %v", err)
		}
		var r2 Record
		if err := Decode(again, &r2); err != nil {
			t.Fatalf("re-encoded record does not decode: %v\n%s", err, again)
		}
		if !sameRecord(&r, &r2) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", r, r2)
		}
	})
}

// FuzzDecodeIntent: restore unmounts and removes the paths an intent names,
// so an intent file of any name and content either fails to decode or names
// the volume it is filed under, a known operation, the store's own staging
// path for that volume, and a target outside the store's directory.
func FuzzDecodeIntent(f *testing.F) {
	f.Add("v.json", []byte(`{"op":"publish","volumeID":"v","targetPath":"/t","stagingPath":"/run/b/mounts/v"}`))
	f.Add("v.json", []byte(`{"op":"unpublish","volumeID":"v","targetPath":"/run/b/volumes","stagingPath":""}`))
	f.Add("v.json", []byte(`{"op":"publish","volumeID":"v","targetPath":"/","stagingPath":"/etc"}`))
	f.Add("w.json", []byte(`{"op":"publish","volumeID":"v","targetPath":"/t"}`))
	f.Add("v.json", []byte(`{"op":"mount","volumeID":"v"}`))
	f.Add("v.json", []byte(`{"op":"publish","volumeID":"v","stagingPath":"/run/b/mounts/v/../../.."}`))
	s := &Store{dir: "/run/b"}
	f.Fuzz(func(t *testing.T, name string, b []byte) {
		var in Intent
		if err := s.decode(name, b, &in); err != nil {
			return
		}
		if !ValidVolumeID(in.VolumeID) || name != in.VolumeID+".json" {
			t.Fatalf("intent file %q decoded with volume ID %q", name, in.VolumeID)
		}
		if in.Op != OpPublish && in.Op != OpUnpublish {
			t.Fatalf("decoded unknown operation %q", in.Op)
		}
		checkPaths(t, in.TargetPath, in.StagingPath)
		if in.StagingPath != "" && in.StagingPath != s.StagingPath(in.VolumeID) {
			t.Fatalf("decoded staging path %q, the store's is %q", in.StagingPath, s.StagingPath(in.VolumeID))
		}
		if in.TargetPath != "" && (in.TargetPath == s.dir || isParent(s.dir, in.TargetPath) || isParent(in.TargetPath, s.dir)) {
			t.Fatalf("decoded target %q overlaps the store %q", in.TargetPath, s.dir)
		}
	})
}

func checkPaths(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if p != "" && (!filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/") {
			t.Fatalf("decoded path %q is not absolute and clean", p)
		}
	}
}

// isParent reports whether dir is a proper ancestor of path, by walking up.
func isParent(dir, path string) bool {
	for p := filepath.Dir(path); ; p = filepath.Dir(p) {
		if p == dir {
			return true
		}
		if p == "/" || p == "." {
			return false
		}
	}
}

// sameRecord compares two records as values: the creation time by instant
// (a decoded zone is a new *Location each time), nil and empty lists and
// maps alike (the encoding omits empty ones under omitempty).
func sameRecord(a, b *Record) bool {
	if !a.Created.Equal(b.Created) {
		return false
	}
	x, y := *a, *b
	x.Created, y.Created = time.Time{}, time.Time{}
	for _, r := range []*Record{&x, &y} {
		if len(r.Attributes) == 0 {
			r.Attributes = nil
		}
		if len(r.Maps) == 0 {
			r.Maps = nil
		}
		if len(r.Identity.ProceedOn) == 0 {
			r.Identity.ProceedOn = nil
		}
		if len(r.Identity.Globals) == 0 {
			r.Identity.Globals = nil
		}
	}
	return reflect.DeepEqual(x, y)
}
