// Package cgrouppath finds a pod's cgroup in the node's cgroup2 hierarchy
// from the pod's UID, the way kubelet names it under either cgroup driver.
//
// The QoS class, which places the pod in the tree, is not in a CSI
// request: Find tries every class and both drivers, and takes the one
// directory that exists. A pod UID is a UUID (checked before it is put in
// any path), so the candidates of two pods never overlap.
package cgrouppath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// Driver is kubelet's cgroup driver.
type Driver string

// Cgroup drivers.
const (
	Cgroupfs Driver = "cgroupfs"
	Systemd  Driver = "systemd"
)

// QoS is a pod's QoS class.
type QoS string

// QoS classes.
const (
	Guaranteed QoS = "Guaranteed"
	Burstable  QoS = "Burstable"
	BestEffort QoS = "BestEffort"
)

var (
	// Drivers and Classes are searched in this order.
	Drivers = []Driver{Cgroupfs, Systemd}
	Classes = []QoS{Guaranteed, Burstable, BestEffort}
)

// DefaultRoot is where the cgroup hierarchy is mounted on most nodes.
const DefaultRoot = "/sys/fs/cgroup"

var uidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// ValidUID reports whether uid is a pod UID: a UUID in its canonical,
// lower-case form, as the API server assigns them.
func ValidUID(uid string) bool { return uidRE.MatchString(uid) }

// PodPath is the pod's cgroup relative to the cgroup2 mount, as kubelet
// names it under kubeletRoot (its --cgroup-root, "/" by default):
//
//	cgroupfs: kubepods/<qos>/pod<uid>   (guaranteed pods: kubepods/pod<uid>)
//	systemd:  kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice
//
// With systemd, each slice's name repeats its parents' (as systemd's
// slice units nest) and the UID's '-' become '_'.
func PodPath(d Driver, q QoS, kubeletRoot, uid string) string {
	var parts []string
	for _, p := range strings.Split(kubeletRoot, "/") {
		if p != "" && d == Systemd {
			p = strings.TrimSuffix(p, ".slice") // "/kubelet.slice" or "/kubelet"
		}
		if p != "" {
			parts = append(parts, p)
		}
	}
	parts = append(parts, "kubepods")
	if q != Guaranteed {
		parts = append(parts, strings.ToLower(string(q)))
	}
	if d == Cgroupfs {
		return filepath.Join(append(parts, "pod"+uid)...)
	}
	parts = append(parts, "pod"+strings.ReplaceAll(uid, "-", "_"))
	slices := make([]string, len(parts))
	for i := range parts {
		slices[i] = strings.Join(parts[:i+1], "-") + ".slice"
	}
	return filepath.Join(slices...)
}

// ErrNoCgroup2 means the node has no cgroup2 hierarchy where looked.
var ErrNoCgroup2 = errors.New("no cgroup2 hierarchy")

// Unified returns the cgroup2 mount under root: root itself on a cgroup v2
// node, root/unified on a hybrid node (v1 controllers with a cgroup2
// mount beside them). On a v1-only node it fails with Precondition.
func Unified(root string) (string, error) {
	for _, dir := range []string{root, filepath.Join(root, "unified")} {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return dir, nil
		}
	}
	return "", fault.Wrap(fault.Precondition, fmt.Errorf("cgroup programs need the pod in a cgroup2 hierarchy, and this node has none at %s or %s/unified (a cgroup v1 node): boot the node with cgroup v2 (systemd.unified_cgroup_hierarchy=1), or set the driver's cgroup root to where cgroup2 is mounted: %w",
		root, root, ErrNoCgroup2))
}

// Finder looks for pods' cgroups.
type Finder struct {
	// Root is where the cgroup hierarchy is mounted (DefaultRoot if empty).
	Root string
	// KubeletRoot is kubelet's --cgroup-root ("/" if empty).
	KubeletRoot string
}

// Find returns the absolute path of the pod's cgroup in the cgroup2
// hierarchy. A pod whose cgroup is in no candidate place fails with
// Precondition naming the UID and every path looked at.
func (f Finder) Find(uid string) (string, error) {
	if !ValidUID(uid) {
		return "", fault.Errorf(fault.Invalid, "pod UID %.64q is not a UUID", uid)
	}
	root := f.Root
	if root == "" {
		root = DefaultRoot
	}
	mount, err := Unified(root)
	if err != nil {
		return "", err
	}
	return find(mount, f.KubeletRoot, uid)
}

// find searches the candidates under a cgroup2 mount.
func find(mount, kubeletRoot, uid string) (string, error) {
	var looked []string
	for _, d := range Drivers {
		for _, q := range Classes {
			p := filepath.Join(mount, PodPath(d, q, kubeletRoot, uid))
			looked = append(looked, p)
			// Lstat: a symbolic link planted in the hierarchy is not a
			// cgroup, and must not lead the attach elsewhere.
			st, err := os.Lstat(p)
			if err == nil && st.IsDir() {
				return p, nil
			}
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return "", fmt.Errorf("looking for the cgroup of pod %s at %s: %w", uid, p, err)
			}
		}
	}
	return "", fault.Errorf(fault.Precondition, "the cgroup of pod %s was not found in the cgroup2 hierarchy (looked at %s): is kubelet's cgroup root (the chart's kubeletCgroupRoot) right, and does the container runtime place pods in cgroup2 on this node?",
		uid, strings.Join(looked, ", "))
}

// CheckDir checks a cgroup named by a local request: an absolute, clean
// path of a directory in the cgroup2 hierarchy under root, reached with
// no symbolic link.
func CheckDir(root, dir string) error {
	if root == "" {
		root = DefaultRoot
	}
	if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
		return fault.Errorf(fault.Invalid, "cgroup %.200q must be an absolute, clean path", dir)
	}
	mount, err := Unified(root)
	if err != nil {
		return err
	}
	if rel, err := filepath.Rel(mount, dir); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return fault.Errorf(fault.Invalid, "cgroup %.200q is not under the cgroup2 hierarchy at %s", dir, mount)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fault.Errorf(fault.Precondition, "cgroup %.200q does not exist: create it first", dir)
		}
		return fmt.Errorf("inspecting cgroup %s: %w", dir, err)
	}
	if real != dir {
		return fault.Errorf(fault.Invalid, "cgroup %.200q is reached through a symbolic link (it is %s): name the real directory", dir, real)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("inspecting cgroup %s: %w", dir, err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() || st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fault.Errorf(fault.Invalid, "%.200q is not a cgroup2 directory", dir)
	}
	return nil
}

// OfProcess is the cgroup2 cgroup of process pid, relative to the cgroup2
// mount (as seen from this process's cgroup namespace), from
// /proc/PID/cgroup.
func OfProcess(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fault.Errorf(fault.Precondition, "process %d is gone", pid)
		}
		return "", fmt.Errorf("reading the cgroup of process %d: %w", pid, err)
	}
	p, err := parseProcCgroup(string(b))
	if err != nil {
		return "", fmt.Errorf("process %d: %w", pid, err)
	}
	return p, nil
}

// parseProcCgroup finds the cgroup2 line ("0::PATH") of a /proc/PID/cgroup
// file. A path outside this namespace's root ("/.." first) is refused: it
// names no directory under the mount.
func parseProcCgroup(s string) (string, error) {
	for _, line := range strings.Split(s, "\n") {
		p, ok := strings.CutPrefix(line, "0::")
		if !ok {
			continue
		}
		if !strings.HasPrefix(p, "/") || p != filepath.Clean(p) || strings.HasPrefix(p, "/..") {
			return "", fault.Errorf(fault.Precondition, "its cgroup2 path %.128q is outside this cgroup namespace", p)
		}
		return p, nil
	}
	return "", fault.Wrap(fault.Precondition, fmt.Errorf("it is in no cgroup2 cgroup (a cgroup v1 node): %w", ErrNoCgroup2))
}
