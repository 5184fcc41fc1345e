package state

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/bpfmount/bpfmount/loader"
)

// Upgrade is an upgrade in place under way: the program of identity From
// is being replaced by that of To. It is written before the loader starts
// and removed once the records follow the new program, so a crash in
// between is finished or undone at the next start.
type Upgrade struct {
	From loader.Identity `json:"from"`
	To   loader.Identity `json:"to"`
}

func (s *Store) upgradesDir() string { return filepath.Join(s.dir, "upgrades") }

// PutUpgrade writes an upgrade record atomically, named after To's key.
func (s *Store) PutUpgrade(u *Upgrade) error {
	if err := os.MkdirAll(s.upgradesDir(), 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	return writeJSON(filepath.Join(s.upgradesDir(), u.To.Key()+".json"), u)
}

// DeleteUpgrade removes the upgrade record to the identity with key; a
// missing one is fine.
func (s *Store) DeleteUpgrade(key string) error {
	return removeRecord(s.upgradesDir(), keyRE, key)
}

// Upgrades returns the upgrade records left behind.
func (s *Store) Upgrades() ([]*Upgrade, error) {
	return records(s, s.upgradesDir(), func(path string, u *Upgrade) error {
		if _, err := s.readJSON(path, u); err != nil {
			return err
		}
		if filepath.Base(path) != u.To.Key()+".json" {
			return fmt.Errorf("%s: decoding state: upgrade record does not match its file", path)
		}
		return nil
	}, func(u *Upgrade) string { return u.To.Key() })
}
