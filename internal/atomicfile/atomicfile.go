// Package atomicfile writes files by temp file and rename, so that a reader
// sees the old content or the new, never a part.
package atomicfile

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// WriteFile writes data to path with the given mode. The temp file is made
// in tempDir, or beside path when tempDir is empty; there it is named
// ".BASE-*.tmp", so a directory scan can tell a crash's leftover (a
// dot-file) from a real file and remove it. tempDir must be on path's file
// system. No fsync: callers either check what they read back or can lose
// the last write.
//
// It works on the raw descriptor (open, write, close, rename): every
// publish and unpublish writes its state through here, and an *os.File
// (its poller registration, finalizer and os.CreateTemp's name pattern)
// added about a fifth to a write on tmpfs.
func WriteFile(path string, data []byte, perm os.FileMode, tempDir string) error {
	dir, base := filepath.Split(path)
	if tempDir == "" {
		tempDir = dir
	}
	tmp, fd, err := createTemp(tempDir, base)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	fail := func(err error) error {
		unix.Close(fd)
		unix.Unlink(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	for b := data; len(b) > 0; {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fail(err)
		}
		b = b[n:]
	}
	// The file was opened 0600 less the umask (0600 under the usual
	// 022); Fchmod, which ignores the umask, sets any other perm exactly.
	if perm != 0o600 {
		if err := unix.Fchmod(fd, uint32(perm.Perm())); err != nil {
			return fail(err)
		}
	}
	if err := unix.Close(fd); err != nil {
		unix.Unlink(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := unix.Rename(tmp, path); err != nil {
		unix.Unlink(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// createTemp creates a new file ".base-N.tmp" in dir, mode 0600, as
// os.CreateTemp does.
func createTemp(dir, base string) (string, int, error) {
	for try := 0; ; try++ {
		name := filepath.Join(dir, "."+base+"-"+strconv.FormatUint(uint64(rand.Uint32()), 10)+".tmp")
		fd, err := unix.Open(name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) && try < 10000 {
			continue
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return "", -1, &os.PathError{Op: "open", Path: name, Err: err}
		}
		return name, fd, nil
	}
}
