package mapfs

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// A volume whose record is lost leaves its bind mount at the target with
// nothing naming its device any more (the staging mount, the record's
// Made.Dev). Ownership is then read from the mount table: a bpffs instance
// the driver made for a volume is mounted only at its staging directory and
// at targets, with the options Expose gives it, so one mounted nowhere but
// below the target roots, with those options, and whose device no record
// names, is an orphaned volume's.

// Orphans says which bpffs instances at a target are the driver's orphans.
type Orphans struct {
	// Staging is the directory of the driver's staging mounts: an instance
	// still mounted below it belongs to a volume (garbage collection
	// removes it, with its targets, when no volume does).
	Staging string
	// Roots are the directories targets lie in: an instance also mounted
	// anywhere else was not made by the driver for a volume.
	Roots []string
	// Live are the devices of recorded volumes' instances.
	Live []uint64
}

// WithdrawOrphan unmounts from target every stacked bpffs instance that is
// an orphan by o, and reports how many it unmounted. A missing target, one
// reached through a symlink, or one with nothing mounted is fine. Another
// filesystem at the target, or a bpffs that is not an orphan, is never
// touched: that is a fault.Precondition naming what is mounted there. The
// target directory is never removed: no record says the driver created it.
func WithdrawOrphan(target string, o Orphans) (int, error) {
	parent, parentDir, name, err := openParentNoFollow(target)
	if err != nil {
		// Missing, or a symlink on the way: nothing there is ours.
		return 0, nil
	}
	defer unix.Close(parent)
	return unmountStack(parent, parentDir, name, func(fd int) (bool, error) { return isOrphan(fd, target, o) })
}

// isOrphan says whether the topmost mount at the open target fd is an
// orphaned bpffs instance by o; another filesystem, or a bpffs that is not
// an orphan, is a fault.Precondition. Nothing mounted there is false.
func isOrphan(fd int, target string, o Orphans) (bool, error) {
	if !isMountRoot(fd) {
		return false, nil
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return false, fmt.Errorf("checking the filesystem at target %s: %w", target, err)
	}
	dev, err := devOf(fd)
	if err != nil {
		return false, fmt.Errorf("checking the filesystem at target %s: %w", target, err)
	}
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("reading mountinfo: %w", err)
	}
	if sfs.Type != unix.BPF_FS_MAGIC {
		return false, fault.Errorf(fault.Precondition, "target %s has a %s filesystem mounted on it, which bpfmount did not mount and does not unmount; unmount it, then unpublish again",
			target, fsTypeAt(infos, target, dev, int64(sfs.Type)))
	}
	if why := o.notOrphan(infos, dev); why != "" {
		return false, fault.Errorf(fault.Precondition, "target %s has a bpffs mounted on it that %s, so bpfmount does not unmount it for this volume; unpublish the volume it belongs to, or unmount it by hand, then unpublish again",
			target, why)
	}
	return true, nil
}

// notOrphan says why the instance dev is not an orphan, or "" when it is.
func (o Orphans) notOrphan(infos []mount.MountInfo, dev uint64) string {
	if slices.Contains(o.Live, dev) {
		return "belongs to another volume"
	}
	found := false
	for _, mi := range infos {
		if !sameDev(mi, dev) {
			continue
		}
		found = true
		mp := UnescapeMountPath(mi.MountPoint)
		if o.Staging != "" && Under(mp, o.Staging) {
			return "belongs to a volume whose staging mount is still there"
		}
		if !underAny(mp, o.Roots) {
			return "is also mounted outside the target directories, so bpfmount did not mount it"
		}
		if !madeByExpose(mi) {
			return "was not mounted by bpfmount (its mount options are not those bpfmount uses)"
		}
	}
	if !found {
		return "is not in the mount table"
	}
	return ""
}

// madeByExpose reports whether a mount looks as Expose leaves a volume's:
// the whole instance, nosuid, nodev and noexec, and the instance's root
// mode 0755 (a bpffs mounted with defaults, such as the node's own, shows
// none of these). Not a proof of ownership on its own, it keeps a bpffs
// someone mounted by hand at a target from being taken for an orphan.
func madeByExpose(mi mount.MountInfo) bool {
	if mi.Root != "/" || !slices.Contains(mi.SuperOptions, "mode=755") {
		return false
	}
	for _, opt := range []string{"nosuid", "nodev", "noexec"} {
		if !slices.Contains(mi.MountOptions, opt) {
			return false
		}
	}
	return true
}

// UnmountBinds unmounts the mounts of the bpffs instance at staging that
// lie below roots (the targets it was bound to), leaving staging's own
// directory alone, and returns the mount points it unmounted. Garbage
// collection calls it before it removes an orphaned staging mount: once
// that is gone, nothing ties the targets' mounts to a volume. Nothing is
// reached through a symlink; anything but staging's own instance is left.
func UnmountBinds(staging string, roots []string) ([]string, error) {
	dev, ok := bpfMountDev(staging)
	if !ok {
		return nil, nil
	}
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	stagingDir := filepath.Dir(staging)
	var done []string
	var errs []error
	for _, mi := range infos {
		mp := UnescapeMountPath(mi.MountPoint)
		if !sameDev(mi, dev) || Under(mp, stagingDir) || !underAny(mp, roots) || slices.Contains(done, mp) {
			continue
		}
		parent, parentDir, name, err := openParentNoFollow(mp)
		if err != nil {
			continue // moved, or behind a symlink now: not reachable as ours
		}
		n, err := unmountOurs(parent, parentDir, name, dev)
		unix.Close(parent)
		if err != nil {
			errs = append(errs, err)
		}
		if n > 0 {
			done = append(done, mp)
		}
	}
	return done, errors.Join(errs...)
}

func sameDev(mi mount.MountInfo, dev uint64) bool {
	return uint32(mi.Major) == unix.Major(dev) && uint32(mi.Minor) == unix.Minor(dev)
}

func underAny(path string, roots []string) bool {
	for _, r := range roots {
		if Under(path, r) {
			return true
		}
	}
	return false
}

// fsTypeAt names the filesystem mounted at target, for a message.
func fsTypeAt(infos []mount.MountInfo, target string, dev uint64, magic int64) string {
	name := ""
	for _, mi := range infos {
		if sameDev(mi, dev) && UnescapeMountPath(mi.MountPoint) == target {
			name = mi.FsType // the last one is the topmost
		}
	}
	if name == "" {
		return fmt.Sprintf("non-bpffs (magic %#x)", magic)
	}
	return name
}
