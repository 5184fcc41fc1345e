// Package mapfs exposes pinned eBPF maps at a directory: it mounts a fresh
// bpffs instance at a staging directory, pins clones of the chosen maps in
// it, and bind-mounts it onto the target.
//
// A fresh bpffs instance per target keeps each consumer's view to the maps it
// asked for, lets the file modes of its pins differ per target (read-only
// targets get 0440 pins), and makes withdrawal a matter of unmounting: the
// instance and its pins vanish with the last mount, while the maps live on
// in the loader's own pins.
//
// It uses mount(2) directly and never executes mount binaries.
package mapfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"

	"github.com/bpfmount/bpfmount/internal/failpoint"
)

// Options say how to expose the maps.
type Options struct {
	// ReadOnly makes the pins 0440 and the target mount read-only; otherwise
	// the pins are 0660.
	ReadOnly bool
	// GID owns the pins when >= 0, so a consumer in that group can open
	// them without being root. Negative keeps root's group.
	GID int
}

// Pin file modes. A read-only bind mount does not stop root from writing a
// map, but these modes do stop a non-root consumer.
const (
	ModeReadOnly  = 0o440
	ModeReadWrite = 0o660
)

const mountFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC

// Expose mounts a fresh bpffs at staging, pins a clone of each map there
// under its name, and bind-mounts staging onto target, creating both
// directories if needed. On error it undoes everything it did.
func Expose(staging, target string, maps map[string]*ebpf.Map, opts Options) (err error) {
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	created, err := mkdir(staging, 0o700)
	if err != nil {
		return fmt.Errorf("creating staging directory %s: %w", staging, err)
	}
	if created {
		undo = append(undo, func() { os.Remove(staging) })
	}
	if err := unix.Mount("bpf", staging, "bpf", mountFlags, "mode=0755"); err != nil {
		return fmt.Errorf("mounting bpffs at %s: %w", staging, err)
	}
	undo = append(undo, func() { unmountAll(staging) })
	failpoint.Hit("mapfs.staged")

	mode := os.FileMode(ModeReadWrite)
	if opts.ReadOnly {
		mode = ModeReadOnly
	}
	names := make([]string, 0, len(maps))
	for n := range maps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := pinClone(maps[name], filepath.Join(staging, name), mode, opts.GID); err != nil {
			return fmt.Errorf("exposing map %s: %w", name, err)
		}
	}

	failpoint.Hit("mapfs.pinned")
	created, err = mkdir(target, 0o750)
	if err != nil {
		return fmt.Errorf("creating target directory %s: %w", target, err)
	}
	if created {
		undo = append(undo, func() { os.Remove(target) })
	}
	if err := unix.Mount(staging, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s onto %s: %w", staging, target, err)
	}
	undo = append(undo, func() { unmountAll(target) })
	failpoint.Hit("mapfs.bound")
	if opts.ReadOnly {
		if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|mountFlags, ""); err != nil {
			return fmt.Errorf("remounting %s read-only: %w", target, err)
		}
	}
	return nil
}

func pinClone(m *ebpf.Map, path string, mode os.FileMode, gid int) error {
	// Clone: pinning the loader's own handle would move its pin (and
	// fail across bpffs instances); a clone adds a second pin.
	c, err := m.Clone()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Pin(path); err != nil {
		return err
	}
	if gid >= 0 {
		if err := os.Lchown(path, 0, gid); err != nil {
			return err
		}
	}
	return os.Chmod(path, mode)
}

// Withdraw unmounts target and staging and removes both directories. It is
// idempotent: missing directories and absent mounts are fine. A target that
// still holds files after unmounting is not removed and is an error. An
// empty staging is skipped.
func Withdraw(staging, target string) error {
	var errs []error
	for _, dir := range []string{target, staging} {
		if dir == "" {
			continue
		}
		if err := unmountAll(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		if dir == target {
			failpoint.Hit("mapfs.target-unmounted")
		}
		if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing %s: %w", dir, err))
		}
	}
	if len(errs) == 0 {
		failpoint.Hit("mapfs.withdrawn")
	}
	return errors.Join(errs...)
}

// unmountAll unmounts dir until nothing is mounted there (mounts may be
// stacked by an earlier double publish).
func unmountAll(dir string) error {
	for i := 0; i < 16; i++ {
		err := unix.Unmount(dir, 0)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not a mount point (any more), or gone
		case errors.Is(err, unix.EBUSY):
			// A consumer still has it open: detach it now, the kernel
			// frees it when the last user goes.
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmounting %s: %w", dir, err)
			}
		default:
			return fmt.Errorf("unmounting %s: %w", dir, err)
		}
	}
	return fmt.Errorf("unmounting %s: still mounted after 16 unmounts", dir)
}

func mkdir(dir string, mode os.FileMode) (created bool, err error) {
	err = os.Mkdir(dir, mode)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrExist) {
		st, statErr := os.Stat(dir)
		if statErr != nil {
			return false, statErr
		}
		if !st.IsDir() {
			return false, fmt.Errorf("%s exists and is not a directory", dir)
		}
		return false, nil
	}
	return false, err
}

// Mount describes what is mounted at a directory.
type Mount struct {
	// Mounted is false when nothing is mounted there.
	Mounted bool
	// FSType is the filesystem type of the topmost mount ("bpf" for ours).
	FSType string
	// Dev identifies the filesystem instance (major:minor); a target and
	// the staging directory it was bound from share it.
	Dev string
	// ReadOnly is true for a read-only mount.
	ReadOnly bool
	// Count is how many mounts are stacked there.
	Count int
}

// Inspect reports what is mounted at dir, read from the kernel's mountinfo
// (which sees bind mounts, unlike a device-number comparison).
func Inspect(dir string) (Mount, error) {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return Mount{}, nil
	}
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return Mount{}, fmt.Errorf("reading mountinfo: %w", err)
	}
	var m Mount
	for _, mi := range infos {
		if mi.MountPoint != dir {
			continue
		}
		m.Mounted = true
		m.Count++
		m.FSType = mi.FsType
		m.Dev = fmt.Sprintf("%d:%d", mi.Major, mi.Minor)
		m.ReadOnly = false
		for _, o := range mi.MountOptions {
			if o == "ro" {
				m.ReadOnly = true
			}
		}
	}
	return m, nil
}
