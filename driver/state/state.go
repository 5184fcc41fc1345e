// Package state keeps the driver's volume records and intents on disk.
//
// A record describes one published volume: what was asked, what was
// attached (the loader identity, enough to re-open its pins after a
// restart) and where it is mounted. An intent is written before a publish or
// unpublish touches the kernel and removed when the operation ends, so a
// crash in between is found at the next start and rolled back or finished.
//
// Files are written atomically (temp file, then rename) and never fsynced:
// they live in /run, which dies with a reboot exactly like the pins they
// describe, so they only have to survive a process crash.
package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/bpfmount/bpfmount/internal/atomicfile"
	"github.com/bpfmount/bpfmount/internal/mapfs"
	"github.com/bpfmount/bpfmount/loader"
)

// Version is the record format version.
const Version = 1

// Pod is what kubelet tells about the pod that owns a volume.
type Pod struct {
	Name           string `json:"name,omitempty"`
	Namespace      string `json:"namespace,omitempty"`
	UID            string `json:"uid,omitempty"`
	ServiceAccount string `json:"serviceAccount,omitempty"`
}

// Record is one published volume.
type Record struct {
	Version     int               `json:"version"`
	VolumeID    string            `json:"volumeID"`
	TargetPath  string            `json:"targetPath"`
	StagingPath string            `json:"stagingPath"`
	ReadOnly    bool              `json:"readOnly"`
	MountGroup  string            `json:"mountGroup,omitempty"`
	Attributes  map[string]string `json:"attributes"`
	Image       string            `json:"image"`
	Signed      bool              `json:"signed,omitempty"`
	Identity    loader.Identity   `json:"identity"`
	Key         string            `json:"key"`
	ProgramID   uint32            `json:"programID"`
	Maps        []string          `json:"maps"`
	Pod         Pod               `json:"pod,omitzero"`
	Created     time.Time         `json:"created"`
	// Mount is what the publish made (the bpffs instance's device, whether
	// it created the target directory): unpublish removes exactly that.
	Mount mapfs.Made `json:"mount,omitzero"`
	// Broken, when set, says why the volume's program could not be
	// re-adopted at start (its pins were gone or damaged): nothing of it is
	// counted as loaded, a publish of it starts afresh, and its unpublish
	// cleans up what is left.
	Broken string `json:"broken,omitempty"`
	// KeepAttached is how long the program stays attached after this
	// volume goes, when no other volume holds it (see Linger).
	KeepAttached time.Duration `json:"keepAttached,omitempty"`
	// ResetMaps, after an upgrade in place by this volume's publish, are
	// the maps that changed shape and started empty.
	ResetMaps []string `json:"resetMaps,omitempty"`
}

// Clone returns a deep copy of r, so a caller may change it without
// changing a copy kept elsewhere (the driver's in-memory index).
func (r *Record) Clone() *Record {
	c := *r
	c.Attributes = maps.Clone(r.Attributes)
	c.Maps = slices.Clone(r.Maps)
	c.Identity.ProceedOn = slices.Clone(r.Identity.ProceedOn)
	c.Identity.Globals = maps.Clone(r.Identity.Globals)
	return &c
}

// Op names the operation an intent is for.
type Op string

// Operations.
const (
	OpPublish   Op = "publish"
	OpUnpublish Op = "unpublish"
)

// Intent is an operation in flight.
type Intent struct {
	Op          Op     `json:"op"`
	VolumeID    string `json:"volumeID"`
	TargetPath  string `json:"targetPath"`
	StagingPath string `json:"stagingPath"`
	// Key is the loader identity's key: garbage collection keeps its pins
	// while an interrupted operation's intent is kept.
	Key string `json:"key,omitempty"`
	// CreateTarget is true when the target did not exist before the
	// publish, so a rollback may remove the directory it created.
	CreateTarget bool `json:"createTarget,omitempty"`
}

// Store is a directory of records and intents.
type Store struct {
	dir string
}

var volumeIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidVolumeID reports whether id is safe as a single path element.
func ValidVolumeID(id string) bool {
	return volumeIDRE.MatchString(id) && id != "." && id != ".." && !strings.Contains(id, "..")
}

// Open creates the store's directories under dir if needed.
func Open(dir string) (*Store, error) {
	s := &Store{dir: dir}
	for _, d := range []string{s.volumesDir(), s.intentsDir(), s.MountsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating state directory: %w", err)
		}
	}
	return s, nil
}

func (s *Store) volumesDir() string { return filepath.Join(s.dir, "volumes") }
func (s *Store) intentsDir() string { return filepath.Join(s.dir, "intents") }

// MountsDir holds the per-volume staging directories.
func (s *Store) MountsDir() string { return filepath.Join(s.dir, "mounts") }

// StagingPath is where a volume's bpffs instance is mounted.
func (s *Store) StagingPath(volumeID string) string { return filepath.Join(s.MountsDir(), volumeID) }

// Put writes a record atomically.
func (s *Store) Put(r *Record) error {
	r.Version = Version
	return writeJSON(filepath.Join(s.volumesDir(), r.VolumeID+".json"), r)
}

// Get returns a volume's record, or nil when there is none.
func (s *Store) Get(volumeID string) (*Record, error) {
	var r Record
	ok, err := s.readJSON(filepath.Join(s.volumesDir(), volumeID+".json"), &r)
	if !ok || err != nil {
		return nil, err
	}
	return &r, nil
}

// Delete removes a volume's record; a missing one is fine.
func (s *Store) Delete(volumeID string) error {
	return remove(filepath.Join(s.volumesDir(), volumeID+".json"))
}

// List returns every record, sorted by volume ID. Records that cannot be
// decoded are returned as errors alongside the good ones.
func (s *Store) List() ([]*Record, error) {
	var out []*Record
	err := s.each(s.volumesDir(), func(path string) error {
		var r Record
		if _, err := s.readJSON(path, &r); err != nil {
			return err
		}
		out = append(out, &r)
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].VolumeID < out[j].VolumeID })
	return out, err
}

// PutIntent writes an intent atomically.
func (s *Store) PutIntent(in *Intent) error {
	return writeJSON(filepath.Join(s.intentsDir(), in.VolumeID+".json"), in)
}

// DeleteIntent removes a volume's intent; a missing one is fine.
func (s *Store) DeleteIntent(volumeID string) error {
	return remove(filepath.Join(s.intentsDir(), volumeID+".json"))
}

// Intents returns the intents left behind, sorted by volume ID.
func (s *Store) Intents() ([]*Intent, error) {
	var out []*Intent
	err := s.each(s.intentsDir(), func(path string) error {
		var in Intent
		if _, err := s.readJSON(path, &in); err != nil {
			return err
		}
		out = append(out, &in)
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].VolumeID < out[j].VolumeID })
	return out, err
}

// records decodes every record in dir with read, sorted by key: the
// listing of lingers, node programs and upgrades. A missing dir holds no
// record (none was ever written); records that cannot be decoded are
// returned as errors alongside the good ones.
func records[T any](s *Store, dir string, read func(path string, v *T) error, key func(*T) string) ([]*T, error) {
	var out []*T
	err := s.each(dir, func(path string) error {
		v := new(T)
		if err := read(path, v); err != nil {
			return err
		}
		out = append(out, v)
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	sort.Slice(out, func(i, j int) bool { return key(out[i]) < key(out[j]) })
	return out, err
}

// removeRecord removes name's record from dir; a missing one is fine, and
// a name re refuses cannot name a file, so there is nothing to remove.
func removeRecord(dir string, re *regexp.Regexp, name string) error {
	if !re.MatchString(name) {
		return nil
	}
	return remove(filepath.Join(dir, name+".json"))
}

func (s *Store) each(dir string, fn func(path string) error) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, de := range ents {
		name := de.Name()
		if strings.HasPrefix(name, ".") {
			// A temp file left by a crash mid-write: the rename never
			// happened, so the old file (if any) is still the truth.
			os.Remove(filepath.Join(dir, name))
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		if err := fn(filepath.Join(dir, name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, 0o600, "")
}

func (s *Store) readJSON(path string, v any) (bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := s.decode(filepath.Base(path), b, v); err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	return true, nil
}

// decode is Decode plus what only the store knows: the file is named after
// the volume it describes, the staging path is the one the store gives that
// volume, and the target lies outside the store's directory. Restore
// unmounts and removes what a record or intent names, so a file that was
// edited or damaged must not be able to point it anywhere else.
func (s *Store) decode(name string, b []byte, v any) error {
	if err := Decode(b, v); err != nil {
		return err
	}
	var id, target, staging string
	switch x := v.(type) {
	case *Record:
		id, target, staging = x.VolumeID, x.TargetPath, x.StagingPath
	case *Intent:
		id, target, staging = x.VolumeID, x.TargetPath, x.StagingPath
	default:
		return nil
	}
	if name != id+".json" {
		return fmt.Errorf("decoding state: file %q describes volume %q", name, id)
	}
	if staging != "" && staging != s.StagingPath(id) {
		return fmt.Errorf("decoding state: staging path %q of volume %q is not %s", staging, id, s.StagingPath(id))
	}
	if target != "" && (underDir(target, s.dir) || underDir(s.dir, target)) {
		return fmt.Errorf("decoding state: target path %q overlaps the state directory %s", target, s.dir)
	}
	return nil
}

// underDir reports whether path is dir or below it; both are clean.
func underDir(path, dir string) bool {
	dir = filepath.Clean(dir)
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

// maxPath bounds a stored path, as the kernel's PATH_MAX does.
const maxPath = 4096

// Decode decodes a record or intent. Trailing data is an error, and so is
// a record of another format version (an incompatible change bumps
// Version). Unknown fields are not: releases add optional fields within a
// version, and an upgrade or a rollback must still read the records and
// intents the other release wrote. It also checks what restore acts on: a
// safe volume ID, a known operation, and paths that are empty or absolute,
// clean and not /.
func Decode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decoding state: %w", err)
	}
	// More() is false before a stray ']' or '}', so look for any token.
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("decoding state: trailing data")
	}
	var id string
	var paths []string
	switch x := v.(type) {
	case *Record:
		if x.Version != Version {
			return fmt.Errorf("decoding state: record version %d, this driver reads version %d", x.Version, Version)
		}
		id, paths = x.VolumeID, []string{x.TargetPath, x.StagingPath}
	case *Intent:
		if x.Op != OpPublish && x.Op != OpUnpublish {
			return fmt.Errorf("decoding state: unknown intent operation %.40q", x.Op)
		}
		id, paths = x.VolumeID, []string{x.TargetPath, x.StagingPath}
	default:
		return nil
	}
	if !ValidVolumeID(id) {
		return fmt.Errorf("decoding state: invalid volume ID %.140q", id)
	}
	for _, p := range paths {
		if p == "" {
			continue
		}
		if len(p) > maxPath || strings.ContainsRune(p, 0) || !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
			return fmt.Errorf("decoding state: path %.200q is not an absolute, clean path other than /", p)
		}
	}
	return nil
}

func remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
