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
	"slices"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/fault"
)

// Options say how to expose the maps.
type Options struct {
	// ReadOnly makes the pins 0440, the volume's bpffs instance read-only
	// and the target mount read-only; otherwise the pins are 0660.
	ReadOnly bool
	// GID owns the pins when >= 0, so a consumer in that group can open
	// them without being root. Negative keeps root's group.
	GID int
}

// Pin file modes. They stop a non-root consumer; a read-only volume's
// filesystem is also read-only, which stops root.
const (
	ModeReadOnly  = 0o440
	ModeReadWrite = 0o660
)

const mountFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC

// Made is what Expose made. The caller records it, so that Withdraw removes
// exactly that and nothing else.
type Made struct {
	// Dev is the device of the volume's bpffs instance: a mount at the
	// target is the volume's only when it is on this device.
	Dev uint64 `json:"dev,omitempty"`
	// TargetCreated is true when Expose created the target directory;
	// Withdraw removes only a directory it created.
	TargetCreated bool `json:"targetCreated,omitempty"`
}

// Expose mounts a fresh bpffs at staging, pins a clone of each map there
// under its name, and bind-mounts staging onto the checked target, creating
// the target directory if it was missing. A read-only volume's bpffs
// instance is remounted read-only once its pins are in place, so even root
// (CAP_DAC_OVERRIDE) cannot open a pin for writing: BPF_OBJ_GET fails with
// EROFS. On error it undoes everything it did.
func Expose(staging string, t *Target, maps map[string]*ebpf.Map, opts Options) (made Made, err error) {
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
			made = Made{}
		}
	}()
	created, err := mkdir(staging, 0o700)
	if err != nil {
		return made, fmt.Errorf("creating staging directory %s: %w", staging, err)
	}
	if created {
		undo = append(undo, func() { os.Remove(staging) })
	}
	if err := unix.Mount("bpf", staging, "bpf", mountFlags, "mode=0755"); err != nil {
		return made, fmt.Errorf("mounting bpffs at %s: %w", staging, err)
	}
	undo = append(undo, func() { unmountAll(staging) })
	var st unix.Stat_t
	if err := unix.Stat(staging, &st); err != nil {
		return made, err
	}
	made.Dev = st.Dev
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
			return made, fmt.Errorf("exposing map %s: %w", name, err)
		}
	}
	if opts.ReadOnly {
		// The superblock, not only a mount: BPF_OBJ_GET ignores mount
		// flags but not a read-only filesystem.
		if err := unix.Mount("", staging, "", unix.MS_REMOUNT|unix.MS_RDONLY|mountFlags, "mode=0755"); err != nil {
			return made, fmt.Errorf("remounting the bpffs at %s read-only: %w", staging, err)
		}
	}
	failpoint.Hit("mapfs.pinned")

	if !t.Existed {
		if err := unix.Mkdirat(t.parent, t.name, 0o750); err != nil {
			return made, fault.Errorf(fault.Precondition, "creating target directory %s: %v", t.Path, err)
		}
		made.TargetCreated = true
		undo = append(undo, func() { unix.Unlinkat(t.parent, t.name, unix.AT_REMOVEDIR) })
	}
	dir, err := t.openDir()
	if err != nil {
		return made, err
	}
	defer unix.Close(dir)
	if err := emptyDir(dir); err != nil {
		return made, fault.Errorf(fault.Precondition, "target %s is not empty (any more); bpfmount mounts only onto an empty directory", t.Path)
	}
	if err := unix.Mount(staging, procPath(dir), "", unix.MS_BIND, ""); err != nil {
		return made, fmt.Errorf("bind-mounting %s onto %s: %w", staging, t.Path, err)
	}
	dev := made.Dev
	undo = append(undo, func() { unmountOurs(t.parent, t.parentDir, t.name, dev) })
	if opts.ReadOnly {
		if err := remountBindReadOnly(t, made.Dev); err != nil {
			return made, err
		}
	}
	failpoint.Hit("mapfs.bound")
	return made, nil
}

// SealReadOnly makes the bpffs instance mounted at staging read-only, for a
// read-only volume exposed by a version that left it writable. Anything
// but a bpffs mounted at staging is left alone.
func SealReadOnly(staging string) error {
	if _, ok := bpfMountDev(staging); !ok {
		return nil
	}
	if err := unix.Mount("", staging, "", unix.MS_REMOUNT|unix.MS_RDONLY|mountFlags, "mode=0755"); err != nil {
		return fmt.Errorf("remounting the bpffs at %s read-only: %w", staging, err)
	}
	return nil
}

// remountBindReadOnly makes the bind mount at the target read-only, reaching
// it through the checked parent and verifying it is the volume's instance.
func remountBindReadOnly(t *Target, dev uint64) error {
	fd, err := unix.Openat(t.parent, t.name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("re-opening target %s: %w", t.Path, err)
	}
	defer unix.Close(fd)
	if d, err := devOf(fd); err != nil || d != dev {
		return fmt.Errorf("target %s is not the volume's mount after bind-mounting it: %w", t.Path, errNotOurs)
	}
	if err := unix.Mount("", procPath(fd), "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|mountFlags, ""); err != nil {
		return fmt.Errorf("remounting %s read-only: %w", t.Path, err)
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

// Withdraw undoes what Expose made: it unmounts from target only mounts of
// the volume's own bpffs instance (made.Dev, or staging's device when it is
// still mounted), removes the target directory only when Expose created it,
// and unmounts and removes staging (the driver's own directory). Nothing at
// target is reached through a symlink. It is idempotent: missing
// directories and absent mounts are fine. A created target that still holds
// files after unmounting is not removed and is an error; one with another
// filesystem mounted on it is left alone.
func Withdraw(staging, target string, made Made) error {
	var errs []error
	dev := made.Dev
	if staging != "" {
		if d, ok := bpfMountDev(staging); ok {
			dev = d
		}
	}
	if target != "" {
		if err := withdrawTarget(target, dev, made.TargetCreated); err != nil {
			errs = append(errs, err)
		} else {
			failpoint.Hit("mapfs.target-unmounted")
		}
	}
	if staging != "" && len(errs) == 0 {
		if err := unmountAll(staging); err != nil {
			errs = append(errs, err)
		} else if err := os.Remove(staging); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing %s: %w", staging, err))
		}
	}
	if len(errs) == 0 {
		failpoint.Hit("mapfs.withdrawn")
	}
	return errors.Join(errs...)
}

func withdrawTarget(target string, dev uint64, created bool) error {
	parent, parentDir, name, err := openParentNoFollow(target)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		// A symlink on the way, or worse: nothing there was made by us.
		return nil
	}
	defer unix.Close(parent)
	if _, err := unmountOurs(parent, parentDir, name, dev); err != nil {
		return err
	}
	if !created {
		return nil
	}
	err = unix.Unlinkat(parent, name, unix.AT_REMOVEDIR)
	switch {
	case err == nil, errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.EBUSY):
		// Gone, replaced by a file, or someone else's mount sits on it:
		// none of those is ours to remove.
		return nil
	case errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST):
		return fmt.Errorf("target %s still holds files after unmounting; remove them, then unpublish again", target)
	}
	return fmt.Errorf("removing %s: %w", target, err)
}

// bpfMountDev returns the device of the bpffs mounted at dir, if one is.
func bpfMountDev(dir string) (uint64, bool) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	defer unix.Close(fd)
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil || sfs.Type != unix.BPF_FS_MAGIC || !isMountRoot(fd) {
		return 0, false
	}
	d, err := devOf(fd)
	return d, err == nil
}

// unmountAll unmounts the driver's own staging directory until nothing is
// mounted there (mounts may be stacked by an earlier double publish).
func unmountAll(dir string) error {
	for i := 0; i < 16; i++ {
		err := unix.Unmount(dir, unix.UMOUNT_NOFOLLOW)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not a mount point (any more), or gone
		case errors.Is(err, unix.EBUSY):
			// A consumer still has it open: detach it now, the kernel
			// frees it when the last user goes.
			if err := unix.Unmount(dir, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
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
		st, statErr := os.Lstat(dir)
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
	// SuperReadOnly is true when the filesystem instance itself is
	// read-only (what stops root from opening a pin for writing).
	SuperReadOnly bool
}

// Inspect reports what is mounted at dir, read from the kernel's mountinfo
// (which sees bind mounts, unlike a device-number comparison).
func Inspect(dir string) (Mount, error) {
	// Most calls ask about a target not mounted yet: statx answers that
	// alone, without reading and parsing mountinfo, which grows with the
	// mounts on the node (two for each volume).
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE, &stx)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return Mount{}, nil
	}
	if err == nil && stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return Mount{}, nil
	}
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return Mount{}, fmt.Errorf("reading mountinfo: %w", err)
	}
	var m Mount
	for _, mi := range infos {
		if UnescapeMountPath(mi.MountPoint) != dir {
			continue
		}
		m.Mounted = true
		m.FSType = mi.FsType
		m.Dev = fmt.Sprintf("%d:%d", mi.Major, mi.Minor)
		m.ReadOnly = slices.Contains(mi.MountOptions, "ro")
		m.SuperReadOnly = slices.Contains(mi.SuperOptions, "ro")
	}
	return m, nil
}

// UnescapeMountPath decodes mountinfo's escapes (\040 for a space, \011, \012,
// \134), which the parser leaves in place.
func UnescapeMountPath(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
