package testenv

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"

	"github.com/bpfmount/bpfmount/internal/mapfs"
)

// XDPProgram returns the ID of the XDP program attached to an interface, or
// 0.
func XDPProgram(t testing.TB, ifname string) uint32 {
	t.Helper()
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		t.Fatalf("looking up %s: %v", ifname, err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		return x.ProgId
	}
	return 0
}

// TCXPrograms returns the IDs of the tcx programs on an interface and
// direction, in run order.
func TCXPrograms(t testing.TB, ifname, direction string) []ebpf.ProgramID {
	t.Helper()
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		t.Fatalf("looking up %s: %v", ifname, err)
	}
	attach := ebpf.AttachTCXIngress
	if direction == "egress" {
		attach = ebpf.AttachTCXEgress
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: attach})
	if errors.Is(err, unix.EINVAL) || errors.Is(err, ebpf.ErrNotSupported) {
		return nil // a kernel without tcx (before 6.6) has no tcx programs
	}
	if err != nil {
		t.Fatalf("querying tcx programs on %s: %v", ifname, err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

// MountsUnder returns the mount points at or below dir.
func MountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mi := range infos {
		mp := mapfs.UnescapeMountPath(mi.MountPoint) // "\040" for a space
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

// Files lists the regular files and pins below dir (directories left out).
func Files(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// AssertClean fails the test unless the daemon holds no volume: no record,
// no intent, no pin, no staging mount, no mount at target, no target
// directory, and nothing attached to the veth.
func (d *Daemon) AssertClean(t testing.TB, v *Veth, targets ...string) {
	t.Helper()
	AssertClean(t, d.StateDir, d.BPFFSRoot, v, targets...)
}

// AssertClean checks a daemon's directories, a veth and targets as
// Daemon.AssertClean does, for a daemon running in another process.
func AssertClean(t testing.TB, stateDir, bpffsRoot string, v *Veth, targets ...string) {
	t.Helper()
	d := struct{ StateDir, BPFFSRoot string }{stateDir, bpffsRoot}
	if f := Files(t, filepath.Join(d.StateDir, "volumes")); len(f) > 0 {
		t.Errorf("records left behind: %v", f)
	}
	if f := Files(t, filepath.Join(d.StateDir, "intents")); len(f) > 0 {
		t.Errorf("intents left behind: %v", f)
	}
	if f := Files(t, filepath.Join(d.BPFFSRoot, "programs")); len(f) > 0 {
		t.Errorf("pins left behind: %v", f)
	}
	if f := Files(t, filepath.Join(d.BPFFSRoot, "dispatchers")); len(f) > 0 {
		t.Errorf("dispatcher pins left behind: %v", f)
	}
	if m := MountsUnder(t, filepath.Join(d.StateDir, "mounts")); len(m) > 0 {
		t.Errorf("staging mounts left behind: %v", m)
	}
	for _, target := range targets {
		if m := MountsUnder(t, target); len(m) > 0 {
			t.Errorf("mounts left at the target: %v", m)
		}
		if _, err := os.Lstat(target); err == nil {
			t.Errorf("target %s still exists", target)
		}
	}
	if v != nil {
		if id := XDPProgram(t, v.Host); id != 0 {
			t.Errorf("XDP program %d still attached to %s", id, v.Host)
		}
		for _, dir := range []string{"ingress", "egress"} {
			if ids := TCXPrograms(t, v.Host, dir); len(ids) > 0 {
				t.Errorf("tcx programs %v still attached to %s %s", ids, v.Host, dir)
			}
		}
	}
}

// XDPRuns reports whether the program with the given ID runs on an
// interface's XDP hook: attached directly (the lone-program path), or as a
// member of the dispatcher attached there (a freplace link whose target is
// the interface's XDP program).
func XDPRuns(t testing.TB, ifname string, id uint32) bool {
	t.Helper()
	top := XDPProgram(t, ifname)
	if top == 0 || id == 0 {
		return false
	}
	if top == id {
		return true
	}
	return slices.Contains(Extensions(t, top), ebpf.ProgramID(id))
}

// Extensions returns the programs attached by freplace links to the
// program target (a dispatcher's members, of every revision still
// attached to it).
func Extensions(t testing.TB, target uint32) []ebpf.ProgramID {
	t.Helper()
	var out []ebpf.ProgramID
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		if tr := info.Tracing(); tr != nil && tr.TargetObjectId == target {
			out = append(out, info.Program)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("listing links: %v", err)
	}
	return out
}
