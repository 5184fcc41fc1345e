package state

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/bpfmount/bpfmount/loader"
)

// NodeProgram is a program the node keeps loaded because the node's
// programs file names it, whatever pods do.
type NodeProgram struct {
	Name       string            `json:"name"`
	Attributes map[string]string `json:"attributes"`
	Key        string            `json:"key"`
	Identity   loader.Identity   `json:"identity"`
	ProgramID  uint32            `json:"programID,omitempty"`
}

// nameRE is the driver's name attribute: a DNS label.
var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

func (s *Store) nodeProgramsDir() string { return filepath.Join(s.dir, "nodeprograms") }

// PutNodeProgram writes a node program's record atomically.
func (s *Store) PutNodeProgram(p *NodeProgram) error {
	if !nameRE.MatchString(p.Name) || p.Identity.Key() != p.Key {
		return fmt.Errorf("node program record: name %q or key %q is malformed", p.Name, p.Key)
	}
	if err := os.MkdirAll(s.nodeProgramsDir(), 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	return writeJSON(filepath.Join(s.nodeProgramsDir(), p.Name+".json"), p)
}

// DeleteNodeProgram removes a node program's record; a missing one is fine.
func (s *Store) DeleteNodeProgram(name string) error {
	return removeRecord(s.nodeProgramsDir(), nameRE, name)
}

// NodePrograms returns every node program's record, sorted by name.
// Records that cannot be decoded are returned as errors alongside the
// good ones.
func (s *Store) NodePrograms() ([]*NodeProgram, error) {
	return records(s, s.nodeProgramsDir(), func(path string, p *NodeProgram) error {
		if _, err := s.readJSON(path, p); err != nil {
			return err
		}
		if filepath.Base(path) != p.Name+".json" || p.Identity.Key() != p.Key {
			return fmt.Errorf("%s: decoding state: node program record %q does not match its file or identity", path, p.Name)
		}
		return nil
	}, func(p *NodeProgram) string { return p.Name })
}
