package state

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/loader"
)

func TestLingerRecords(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if ls, err := s.Lingers(); err != nil || len(ls) != 0 {
		t.Fatalf("fresh store lingers %v, %v", ls, err)
	}
	id := loader.Identity{Digest: "sha256:ab", Program: "p", Hook: loader.HookXDP, Interface: "eth0", Priority: 1000}
	deadline := time.Now().Add(time.Minute).UTC().Round(0)
	if err := s.PutLinger(&Linger{Key: id.Key(), Identity: id, Deadline: deadline}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetLinger(id.Key())
	if err != nil || got == nil || !got.Deadline.Equal(deadline) {
		t.Fatalf("GetLinger = %+v, %v", got, err)
	}
	// A key that is not the identity's is refused, on write and on read.
	other := id
	other.Interface = "eth1"
	if err := s.PutLinger(&Linger{Key: id.Key(), Identity: other}); err == nil {
		t.Fatal("PutLinger accepted a key that is not its identity's")
	}
	b, _ := os.ReadFile(filepath.Join(s.lingersDir(), id.Key()+".json"))
	if err := os.WriteFile(filepath.Join(s.lingersDir(), other.Key()+".json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	ls, err := s.Lingers()
	if err == nil || len(ls) != 1 || ls[0].Key != id.Key() {
		t.Fatalf("Lingers with a renamed file = %v, %v; want the good one and an error", ls, err)
	}
	if err := s.DeleteLinger(id.Key()); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetLinger(id.Key()); got != nil {
		t.Fatalf("after delete: %+v", got)
	}
	if err := s.DeleteLinger("../volumes/x"); err != nil {
		t.Fatal(err) // a malformed key touches nothing
	}
}
