package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

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
	if !keyRE.MatchString(key) {
		return nil
	}
	return remove(filepath.Join(s.upgradesDir(), key+".json"))
}

// Upgrades returns the upgrade records left behind.
func (s *Store) Upgrades() ([]*Upgrade, error) {
	var out []*Upgrade
	err := s.each(s.upgradesDir(), func(path string) error {
		var u Upgrade
		if _, err := s.readJSON(path, &u); err != nil {
			return err
		}
		if filepath.Base(path) != u.To.Key()+".json" {
			return fmt.Errorf("%s: decoding state: upgrade record does not match its file", path)
		}
		out = append(out, &u)
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	sort.Slice(out, func(i, j int) bool { return out[i].To.Key() < out[j].To.Key() })
	return out, err
}
