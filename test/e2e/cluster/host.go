package cluster

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cgroup v1 hierarchies (or the v2 root) where kubelet's cgroupRoot is
// created and, at teardown, removed.
func cgroupHierarchies() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		i := indexOf(fields, "-")
		if i < 0 || i+1 >= len(fields) {
			continue
		}
		if fs := fields[i+1]; fs == "cgroup" || fs == "cgroup2" {
			out = append(out, fields[4])
		}
	}
	return out
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func (c *Cluster) makeCgroupRoot() error {
	for _, h := range cgroupHierarchies() {
		d := filepath.Join(h, cgroupRoot)
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			return fmt.Errorf("creating cgroup %s: %w", d, err)
		}
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, _ := os.ReadFile(filepath.Join(h, f))
				os.WriteFile(filepath.Join(d, f), b, 0o644)
			}
		}
	}
	return nil
}

func removeCgroups() []error {
	var errs []error
	for _, h := range cgroupHierarchies() {
		root := filepath.Join(h, cgroupRoot)
		if _, err := os.Stat(root); err != nil {
			continue
		}
		var dirs []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			var err error
			for try := 0; try < 50; try++ {
				if err = unix.Rmdir(dirs[i]); err == nil || errors.Is(err, unix.ENOENT) {
					err = nil
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errs
}

func makeSharedBind(dir string) error {
	if err := unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s shared: %w", dir, err)
	}
	return nil
}

func isMountPoint(p string) bool {
	for _, m := range mountPoints() {
		if m == p {
			return true
		}
	}
	return false
}

func mountPoints() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 {
			out = append(out, unescapeMount(f[4]))
		}
	}
	return out
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder unmounts every mount at or below each prefix, deepest first.
func unmountUnder(prefixes ...string) []error {
	var ms []string
	for _, m := range mountPoints() {
		for _, p := range prefixes {
			if m == p || strings.HasPrefix(m, p+"/") {
				ms = append(ms, m)
				break
			}
		}
	}
	sort.SliceStable(ms, func(i, j int) bool { return strings.Count(ms[i], "/") > strings.Count(ms[j], "/") })
	var errs []error
	// Several passes: stacked mounts at one path, and mounts that appear
	// under a path only once the one above is gone.
	for pass := 0; pass < 5 && len(ms) > 0; pass++ {
		var left []string
		for _, m := range ms {
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				left = append(left, m)
			}
		}
		ms = left
	}
	for _, m := range ms {
		errs = append(errs, fmt.Errorf("could not unmount %s", m))
	}
	return errs
}

func stripCounters(s string) string {
	var b bytes.Buffer
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			if i := strings.LastIndex(l, " ["); i > 0 {
				l = l[:i]
			}
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}
