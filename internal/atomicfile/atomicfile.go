// Package atomicfile writes files by temp file and rename, so that a reader
// sees the old content or the new, never a part.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFile writes data to path with the given mode. The temp file is made
// in tempDir, or beside path when tempDir is empty; there it is named
// ".BASE-*.tmp", so a directory scan can tell a crash's leftover (a
// dot-file) from a real file and remove it. tempDir must be on path's file
// system. No fsync: callers either check what they read back or can lose
// the last write.
func WriteFile(path string, data []byte, perm os.FileMode, tempDir string) error {
	dir, base := filepath.Split(path)
	if tempDir == "" {
		tempDir = dir
	}
	f, err := os.CreateTemp(tempDir, "."+base+"-*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	// CreateTemp makes 0600 files; the umask does not apply to Chmod.
	if perm != 0o600 {
		if err := f.Chmod(perm); err != nil {
			return fail(err)
		}
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
