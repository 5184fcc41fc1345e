package mapfs

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// Target is a mount point checked before anything is loaded: it lies under
// an allowed root, no component of it below the root is a symlink, its
// parent exists, and it is missing or an empty directory. The parent stays
// open (O_PATH), so what Expose mounts onto is what was checked, whatever
// happens to the path in between.
type Target struct {
	// Path is the target as asked.
	Path string
	// Existed is true when the directory was there before (then Withdraw
	// never removes it).
	Existed bool

	// parent is the parent directory's O_PATH descriptor (-1 once
	// closed), parentDir its path. The package keeps raw descriptors: an
	// *os.File costs a system call (fcntl) and a finalizer each, about ten
	// times per publish and unpublish.
	parent    int
	parentDir string
	name      string
}

// Close releases the target's parent descriptor. A Target that OpenTarget
// did not make (a test's fake: its parentDir is empty) holds none, and
// Close then touches no descriptor.
func (t *Target) Close() error {
	if t == nil || t.parentDir == "" || t.parent < 0 {
		return nil
	}
	err := unix.Close(t.parent)
	t.parent = -1
	return err
}

// Under reports whether path is root or below it, lexically.
func Under(path, root string) bool {
	if root == "/" {
		return strings.HasPrefix(path, "/")
	}
	return path == root || strings.HasPrefix(path, root+"/")
}

// OpenTarget checks path as a publish target. roots are the directories
// targets may lie in (the administrator's choice, so symlinks in a root
// itself are followed); below the root no symlink is followed. Every
// refusal is a fault.Precondition or fault.Invalid naming the path.
func OpenTarget(path string, roots []string) (*Target, error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path || path == "/" {
		return nil, fault.Errorf(fault.Invalid, "target %q must be an absolute, clean path other than /", path)
	}
	root := ""
	for _, r := range roots {
		if Under(path, r) && path != r && len(r) > len(root) {
			root = r
		}
	}
	if root == "" {
		return nil, fault.Errorf(fault.Precondition, "target %s is outside the directories this node allows targets in (%s); publish below one of them, or have the administrator add one with --target-root",
			path, strings.Join(roots, ", "))
	}
	rootFD, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fault.Errorf(fault.Precondition, "target root %s of target %s cannot be opened: %v", root, path, err)
	}
	defer unix.Close(rootFD)
	dir, name := filepath.Split(path)
	rel := strings.TrimPrefix(strings.TrimPrefix(filepath.Clean(dir), root), "/")
	if rel == "" {
		rel = "."
	}
	fd, err := unix.Openat2(rootFD, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, fault.Errorf(fault.Precondition, "the parent directory %s of target %s does not exist; create it first (kubelet does for pods)", filepath.Clean(dir), path)
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return nil, fault.Errorf(fault.Precondition, "the parent directory of target %s is reached through a symbolic link; give the real path", path)
	case errors.Is(err, unix.ENOTDIR):
		return nil, fault.Errorf(fault.Precondition, "a component of target %s below %s is not a directory", path, root)
	case err != nil:
		return nil, fault.Errorf(fault.Precondition, "opening the parent directory of target %s: %v", path, err)
	}
	t := &Target{Path: path, parent: fd, parentDir: filepath.Clean(dir), name: name}
	if err := t.check(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// check looks at the target itself: missing, or an empty directory.
func (t *Target) check() error {
	var st unix.Stat_t
	err := unix.Fstatat(t.parent, t.name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		t.Existed = false
		return nil
	}
	if err != nil {
		return fault.Errorf(fault.Precondition, "checking target %s: %v", t.Path, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
	case unix.S_IFLNK:
		return fault.Errorf(fault.Precondition, "target %s is a symbolic link; bpfmount mounts only onto a real, empty directory", t.Path)
	default:
		return fault.Errorf(fault.Precondition, "target %s exists and is not a directory", t.Path)
	}
	t.Existed = true
	fd, err := t.openDir()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := emptyDir(fd); err != nil {
		if errors.Is(err, errNotEmpty) {
			return fault.Errorf(fault.Precondition, "target %s is not empty; bpfmount mounts only onto a missing or empty directory", t.Path)
		}
		return fault.Errorf(fault.Precondition, "reading target %s: %v", t.Path, err)
	}
	return nil
}

// openDir opens the target directory itself, never through a symlink.
func (t *Target) openDir() (int, error) {
	fd, err := unix.Openat(t.parent, t.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return -1, fault.Errorf(fault.Precondition, "target %s is not a directory (or became a symbolic link)", t.Path)
	}
	if err != nil {
		return -1, fault.Errorf(fault.Precondition, "opening target %s: %v", t.Path, err)
	}
	return fd, nil
}

// errNotEmpty says a directory holds an entry.
var errNotEmpty = errors.New("directory not empty")

// emptyDir returns nil when the open directory fd holds no entry but "."
// and "..", errNotEmpty when it holds one.
func emptyDir(fd int) error {
	var buf [1024]byte
	for {
		n, err := unix.Getdents(fd, buf[:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		if _, count, _ := unix.ParseDirent(buf[:n], 1, nil); count > 0 {
			return errNotEmpty
		}
	}
}

// procPath names an open descriptor so mount(2) and umount(2) act on what
// it refers to instead of resolving a path again.
func procPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// devOf returns the device of the filesystem an open descriptor is on.
func devOf(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return st.Dev, nil
}

// openParentNoFollow opens the parent of path (O_PATH) without following
// any symlink, for tearing down what a record says was made there.
func openParentNoFollow(path string) (fd int, dir, name string, err error) {
	dir, name = filepath.Split(path)
	dir = filepath.Clean(dir)
	fd, err = unix.Openat2(unix.AT_FDCWD, dir, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, "", "", err
	}
	return fd, dir, name, nil
}

// errNotOurs says the object at a path is not the one we made.
var errNotOurs = errors.New("not made by bpfmount")

// unmount is umount(2); tests count its calls.
var unmount = unix.Unmount

// unmountOurs unmounts, at name in the directory parent (parentDir, for
// errors), every stacked mount whose filesystem is dev, and stops at the
// first one that is not: a mount bpfmount did not make is never touched.
// It reports how many it removed.
func unmountOurs(parent int, parentDir, name string, dev uint64) (int, error) {
	return unmountStack(parent, parentDir, name, func(fd int) (bool, error) {
		d, err := devOf(fd)
		return err == nil && dev != 0 && d == dev && isMountRoot(fd), err
	})
}

// unmountStack unmounts the mounts stacked at name in parent, the topmost
// first, as long as ours says the topmost is to go (false, or an error,
// ends it), and returns how many it unmounted. A name that is gone, a
// symlink or a file ends it too: nothing there is ours.
func unmountStack(parent int, parentDir, name string, ours func(fd int) (bool, error)) (int, error) {
	n := 0
	for i := 0; i < 16; i++ {
		fd, err := unix.Openat(parent, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if ok, err := ours(fd); err != nil || !ok {
			unix.Close(fd)
			return n, err
		}
		// Detached at once: the descriptor that names the very mount
		// checked above holds it, so a plain unmount is always EBUSY. The
		// kernel frees it when its last user (a consumer, or this
		// descriptor) goes.
		err = unmount(procPath(fd), unix.MNT_DETACH)
		unix.Close(fd)
		if err != nil {
			return n, fmt.Errorf("unmounting %s: %w", filepath.Join(parentDir, name), err)
		}
		n++
	}
	return n, fmt.Errorf("unmounting %s: still mounted after 16 unmounts", filepath.Join(parentDir, name))
}

// isMountRoot reports whether an open directory is the root of a mount.
func isMountRoot(fd int) bool {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_BASIC_STATS, &stx); err != nil {
		return false
	}
	return stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
}
