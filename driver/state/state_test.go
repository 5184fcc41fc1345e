package state

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/loader"
)

func openStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func record(s *Store, id string) *Record {
	return &Record{
		VolumeID: id, TargetPath: "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/" + id + "/mount",
		StagingPath: s.StagingPath(id), ReadOnly: true, MountGroup: "1000",
		Attributes: map[string]string{"image": "r/x:1", "interface": "eth0"}, Image: "r/x:1",
		Identity: loader.Identity{Digest: "sha256:00", Program: "xdp_stats", Hook: loader.HookXDP, Interface: "eth0", Priority: 50},
		Key:      "0011", ProgramID: 7, Maps: []string{"xdp_stats_map"},
		Pod:     Pod{Name: "reader", Namespace: "ns", UID: "u", ServiceAccount: "default"},
		Created: time.Unix(1700000000, 0).UTC(),
	}
}

func TestPutGetDelete(t *testing.T) {
	s := openStore(t)
	if r, err := s.Get("v1"); r != nil || err != nil {
		t.Fatalf("Get of a missing record = %v, %v; want nil, nil", r, err)
	}
	want := record(s, "v1")
	want.Version = 0 // Put stamps the version
	if err := s.Put(want); err != nil {
		t.Fatal(err)
	}
	if want.Version != Version {
		t.Errorf("Put left version %d, want %d", want.Version, Version)
	}
	got, err := s.Get("v1")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Get = %+v\nwant %+v", got, want)
	}
	info, err := os.Stat(filepath.Join(s.volumesDir(), "v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("record mode %v, want 0600", info.Mode().Perm())
	}

	// Put replaces.
	want.ProgramID = 8
	if err := s.Put(want); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get("v1"); got == nil || got.ProgramID != 8 {
		t.Errorf("after a second Put, Get = %+v, want program 8", got)
	}

	if err := s.Delete("v1"); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Get("v1"); r != nil || err != nil {
		t.Fatalf("Get after Delete = %v, %v; want nil, nil", r, err)
	}
	if err := s.Delete("v1"); err != nil {
		t.Errorf("Delete of a missing record: %v", err)
	}
}

func TestOpenCreatesPrivateDirectories(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{s.volumesDir(), s.intentsDir(), s.MountsDir()} {
		info, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if !info.IsDir() || info.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v, want a 0700 directory", d, info.Mode())
		}
	}
	if got, want := s.StagingPath("v"), filepath.Join(dir, "mounts", "v"); got != want {
		t.Errorf("StagingPath = %s, want %s", got, want)
	}
	// Opening again keeps what is there.
	if err := s.Put(record(s, "v")); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s2.Get("v"); r == nil || err != nil {
		t.Errorf("reopened store lost the record: %v, %v", r, err)
	}
}

func TestListSortsAndReportsBadFiles(t *testing.T) {
	s := openStore(t)
	for _, id := range []string{"c", "a", "b"} {
		if err := s.Put(record(s, id)); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.VolumeID)
	}
	if strings.Join(ids, ",") != "a,b,c" {
		t.Errorf("List = %v, want a,b,c", ids)
	}

	bad := map[string]string{
		"garbage.json":   "not json",
		"newer.json":     `{"version":2,"volumeID":"newer"}`,
		"renamed.json":   `{"version":1,"volumeID":"other"}`,
		"escape.json":    `{"version":1,"volumeID":"escape","stagingPath":"/etc"}`,
		"relative.json":  `{"version":1,"volumeID":"relative","targetPath":"etc"}`,
		"inside.json":    `{"version":1,"volumeID":"inside","targetPath":"` + s.volumesDir() + `"}`,
		"trailing.json":  `{"version":1,"volumeID":"trailing"}}`,
		"empty.json":     ``,
		"dotdot-id.json": `{"version":1,"volumeID":".."}`,
	}
	for name, content := range bad {
		if err := os.WriteFile(filepath.Join(s.volumesDir(), name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Files that are not records: ignored, and a crash's temp file removed.
	os.WriteFile(filepath.Join(s.volumesDir(), "README"), []byte("x"), 0o600)
	tmp := filepath.Join(s.volumesDir(), ".d.json.tmp")
	os.WriteFile(tmp, []byte("{"), 0o600)

	recs, err = s.List()
	if len(recs) != 3 {
		t.Errorf("List returned %d records with bad files present, want the 3 good ones", len(recs))
	}
	if err == nil {
		t.Fatal("List with bad files returned no error")
	}
	for name := range bad {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("List error does not name %s: %v", name, err)
		}
	}
	if strings.Contains(err.Error(), "README") {
		t.Errorf("List reported a file that is not a record: %v", err)
	}
	if _, statErr := os.Stat(tmp); !os.IsNotExist(statErr) {
		t.Errorf("temp file left by a crash was not removed: %v", statErr)
	}
	if r, err := s.Get("renamed"); r != nil || err == nil {
		t.Errorf("Get of a file naming another volume = %v, %v; want an error", r, err)
	}
}

func TestIntents(t *testing.T) {
	s := openStore(t)
	if ins, err := s.Intents(); len(ins) != 0 || err != nil {
		t.Fatalf("Intents of an empty store = %v, %v", ins, err)
	}
	pub := &Intent{Op: OpPublish, VolumeID: "b", TargetPath: "/t/b", StagingPath: s.StagingPath("b")}
	unpub := &Intent{Op: OpUnpublish, VolumeID: "a", TargetPath: "/t/a", StagingPath: s.StagingPath("a")}
	for _, in := range []*Intent{pub, unpub} {
		if err := s.PutIntent(in); err != nil {
			t.Fatal(err)
		}
	}
	ins, err := s.Intents()
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) != 2 || !reflect.DeepEqual(ins[0], unpub) || !reflect.DeepEqual(ins[1], pub) {
		t.Fatalf("Intents = %+v, want [%+v %+v]", ins, unpub, pub)
	}
	// An intent and a record of the same volume live side by side.
	if err := s.Put(record(s, "a")); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteIntent("a"); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.Get("a"); r == nil {
		t.Error("DeleteIntent removed the record")
	}
	if err := s.DeleteIntent("a"); err != nil {
		t.Errorf("DeleteIntent of a missing intent: %v", err)
	}
	ins, _ = s.Intents()
	if len(ins) != 1 || ins[0].VolumeID != "b" {
		t.Errorf("Intents after delete = %+v, want b only", ins)
	}
}

// An intent names what restore unmounts and removes: a damaged or edited one
// must not reach anything but the volume's own staging path and a target
// outside the store.
func TestIntentsRefuseForeignPaths(t *testing.T) {
	s := openStore(t)
	cases := map[string]string{
		"op.json":       `{"op":"remove","volumeID":"op","targetPath":"/t"}`,
		"staging.json":  `{"op":"publish","volumeID":"staging","targetPath":"/t","stagingPath":"/etc"}`,
		"other.json":    `{"op":"publish","volumeID":"other","targetPath":"/t","stagingPath":"` + s.StagingPath("x") + `"}`,
		"up.json":       `{"op":"publish","volumeID":"up","targetPath":"/t","stagingPath":"` + s.StagingPath("up") + `/../.."}`,
		"root.json":     `{"op":"unpublish","volumeID":"root","targetPath":"/"}`,
		"store.json":    `{"op":"unpublish","volumeID":"store","targetPath":"` + s.MountsDir() + `"}`,
		"above.json":    `{"op":"unpublish","volumeID":"above","targetPath":"` + filepath.Dir(s.dir) + `"}`,
		"relative.json": `{"op":"unpublish","volumeID":"relative","targetPath":"t"}`,
		"nul.json":      `{"op":"unpublish","volumeID":"nul","targetPath":"/t\u0000"}`,
		"id.json":       `{"op":"unpublish","volumeID":"../id","targetPath":"/t"}`,
		"name.json":     `{"op":"unpublish","volumeID":"v","targetPath":"/t"}`,
	}
	for name, content := range cases {
		if err := os.WriteFile(filepath.Join(s.intentsDir(), name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	good := &Intent{Op: OpUnpublish, VolumeID: "good", TargetPath: "/t"}
	if err := s.PutIntent(good); err != nil {
		t.Fatal(err)
	}
	ins, err := s.Intents()
	if len(ins) != 1 || !reflect.DeepEqual(ins[0], good) {
		t.Errorf("Intents = %+v, want only %+v", ins, good)
	}
	if err == nil {
		t.Fatal("no error for bad intents")
	}
	for name := range cases {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
}

// A write replaces the file whole: there is never a partly written record
// under the real name, and no temp file is left behind.
func TestPutIsAtomic(t *testing.T) {
	s := openStore(t)
	r := record(s, "v")
	if err := s.Put(r); err != nil {
		t.Fatal(err)
	}
	// A temp file a crash left before its rename does not shadow the
	// record, and the next List removes it.
	tmp := filepath.Join(s.volumesDir(), ".v.json-123.tmp")
	if err := os.WriteFile(tmp, []byte(`{"version":1,"volu`), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get("v"); err != nil || got == nil || got.ProgramID != r.ProgramID {
		t.Fatalf("Get with a stale temp file = %+v, %v", got, err)
	}
	r.ProgramID = 9
	if err := s.Put(r); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get("v"); got == nil || got.ProgramID != 9 {
		t.Errorf("Get after rewrite = %+v", got)
	}
	if _, err := s.List(); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(s.volumesDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "v.json" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("directory after Put and List holds %v, want only v.json", names)
	}
	// A write that fails leaves the old record in place: internal/atomicfile's
	// TestWriteFileFailureLeavesOldContent covers the writer itself.
}

func TestValidVolumeID(t *testing.T) {
	for id, want := range map[string]bool{
		"v": true, "csi-0123abcd": true, "a.b_c-d": true, strings.Repeat("a", 128): true,
		"": false, ".": false, "..": false, "a..b": false, ".hidden": false, "-x": false,
		"a/b": false, "a b": false, "a\x00": false, strings.Repeat("a", 129): false, "ü": false,
	} {
		if got := ValidVolumeID(id); got != want {
			t.Errorf("ValidVolumeID(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	for name, in := range map[string]string{
		"trailing brace":   `{"version":1,"volumeID":"v"}}`,
		"trailing bracket": `{"version":1,"volumeID":"v"}]`,
		"second value":     `{"version":1,"volumeID":"v"} {}`,
		"unclean path":     `{"version":1,"volumeID":"v","targetPath":"/a/../b"}`,
		"trailing slash":   `{"version":1,"volumeID":"v","stagingPath":"/a/"}`,
		"long path":        `{"version":1,"volumeID":"v","targetPath":"/` + strings.Repeat("a", maxPath) + `"}`,
	} {
		var r Record
		if err := Decode([]byte(in), &r); err == nil {
			t.Errorf("%s: Decode accepted %.60s", name, in)
		}
	}
	var r Record
	if err := Decode([]byte(" {\"version\":1,\"volumeID\":\"v\"}\n\t "), &r); err != nil {
		t.Errorf("Decode refused surrounding white space: %v", err)
	}
}

// An intent written by the previous release (with fields this one dropped)
// and a record with a field a later release added both decode: an upgrade
// or a rollback in the middle of an operation must not lose it.
func TestDecodeAcrossReleases(t *testing.T) {
	var in Intent
	old := `{"op":"publish","volumeID":"v1","targetPath":"/var/lib/kubelet/pods/x/vol","stagingPath":"/run/bpfmount/mounts/v1","key":"abc","started":"2026-01-01T00:00:00Z"}`
	if err := Decode([]byte(old), &in); err != nil {
		t.Fatalf("intent of the previous release: %v", err)
	}
	if in.Op != OpPublish || in.VolumeID != "v1" {
		t.Errorf("decoded %+v", in)
	}
	var rec Record
	newer := `{"version":1,"volumeID":"v2","keepAttachedUntil":"2027-01-01T00:00:00Z"}`
	if err := Decode([]byte(newer), &rec); err != nil {
		t.Fatalf("record with a later release's optional field: %v", err)
	}
	if rec.VolumeID != "v2" {
		t.Errorf("decoded %+v", rec)
	}
}
