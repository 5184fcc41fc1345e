package state

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/bpfmount/bpfmount/loader"
)

// Linger is a program kept attached after its last volume went
// (keepAttached): the loader holds it for the driver until Deadline, and a
// publish of the identical request before then takes it over. It is on
// disk so that the deadline survives a restart.
type Linger struct {
	Key       string          `json:"key"`
	Identity  loader.Identity `json:"identity"`
	ProgramID uint32          `json:"programID,omitempty"`
	Name      string          `json:"name,omitempty"` // the program's name attribute
	Deadline  time.Time       `json:"deadline"`
}

// keyRE is what loader.Identity.Key returns: 24 hex digits.
var keyRE = regexp.MustCompile(`^[0-9a-f]{24}$`)

func (s *Store) lingersDir() string { return filepath.Join(s.dir, "lingers") }

// PutLinger writes a linger record atomically.
func (s *Store) PutLinger(l *Linger) error {
	if !keyRE.MatchString(l.Key) || l.Identity.Key() != l.Key {
		return fmt.Errorf("linger record: key %q is not its identity's", l.Key)
	}
	if err := os.MkdirAll(s.lingersDir(), 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	return writeJSON(filepath.Join(s.lingersDir(), l.Key+".json"), l)
}

// GetLinger returns the linger record of key, or nil when there is none.
func (s *Store) GetLinger(key string) (*Linger, error) {
	if !keyRE.MatchString(key) {
		return nil, nil
	}
	var l Linger
	ok, err := s.readLinger(filepath.Join(s.lingersDir(), key+".json"), &l)
	if !ok || err != nil {
		return nil, err
	}
	return &l, nil
}

// DeleteLinger removes key's linger record; a missing one is fine.
func (s *Store) DeleteLinger(key string) error {
	return removeRecord(s.lingersDir(), keyRE, key)
}

// Lingers returns every linger record, sorted by key. Records that cannot
// be decoded are returned as errors alongside the good ones.
func (s *Store) Lingers() ([]*Linger, error) {
	return records(s, s.lingersDir(), func(path string, l *Linger) error {
		_, err := s.readLinger(path, l)
		return err
	}, func(l *Linger) string { return l.Key })
}

// readLinger decodes a linger record and checks that the file is named
// after the identity it holds, so an edited file cannot make the driver
// release another program.
func (s *Store) readLinger(path string, l *Linger) (bool, error) {
	ok, err := s.readJSON(path, l)
	if !ok || err != nil {
		return ok, err
	}
	if name := filepath.Base(path); name != l.Key+".json" || l.Identity.Key() != l.Key {
		return false, fmt.Errorf("%s: decoding state: linger record of key %q does not match its file or identity", path, l.Key)
	}
	return true, nil
}
