package cgrouppath

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bpfmount/bpfmount/internal/fault"
)

const uid = "8f3c2a1e-5b6d-4c7e-9f80-1a2b3c4d5e6f"

func TestPodPath(t *testing.T) {
	for _, tc := range []struct {
		d    Driver
		q    QoS
		root string
		want string
	}{
		{Cgroupfs, Guaranteed, "/", "kubepods/pod" + uid},
		{Cgroupfs, Burstable, "/", "kubepods/burstable/pod" + uid},
		{Cgroupfs, BestEffort, "", "kubepods/besteffort/pod" + uid},
		{Systemd, Guaranteed, "/", "kubepods.slice/kubepods-pod8f3c2a1e_5b6d_4c7e_9f80_1a2b3c4d5e6f.slice"},
		{Systemd, Burstable, "/", "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8f3c2a1e_5b6d_4c7e_9f80_1a2b3c4d5e6f.slice"},
		{Systemd, BestEffort, "", "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8f3c2a1e_5b6d_4c7e_9f80_1a2b3c4d5e6f.slice"},
		// kubelet's --cgroup-root, when not at the top.
		{Cgroupfs, Burstable, "/kubelet", "kubelet/kubepods/burstable/pod" + uid},
		{Systemd, Burstable, "/kubelet.slice", "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod8f3c2a1e_5b6d_4c7e_9f80_1a2b3c4d5e6f.slice"},
		{Systemd, Guaranteed, "/kubelet", "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod8f3c2a1e_5b6d_4c7e_9f80_1a2b3c4d5e6f.slice"},
	} {
		if got := PodPath(tc.d, tc.q, tc.root, uid); got != tc.want {
			t.Errorf("%s %s root %q: got %s, want %s", tc.d, tc.q, tc.root, got, tc.want)
		}
	}
}

func TestValidUID(t *testing.T) {
	for _, s := range []string{uid, "00000000-0000-0000-0000-000000000000"} {
		if !ValidUID(s) {
			t.Errorf("%q refused", s)
		}
	}
	for _, s := range []string{"", "uid-1", "../../etc", strings.ToUpper(uid), uid + "0", "8f3c2a1e_5b6d_4c7e_9f80_1a2b3c4d5e6f",
		"8f3c2a1e-5b6d-4c7e-9f80-1a2b3c4d5e6/", "{" + uid + "}", "urn:uuid:" + uid} {
		if ValidUID(s) {
			t.Errorf("%q accepted", s)
		}
	}
}

// Every driver and class is found where kubelet puts it; a symbolic link
// in a candidate's place is not taken; a missing pod names its UID and
// every path looked at.
func TestFind(t *testing.T) {
	for _, d := range Drivers {
		for _, q := range Classes {
			mount := t.TempDir()
			want := filepath.Join(mount, PodPath(d, q, "/", uid))
			if err := os.MkdirAll(want, 0o755); err != nil {
				t.Fatal(err)
			}
			got, err := find(mount, "/", uid)
			if err != nil || got != want {
				t.Errorf("%s %s: got %q, %v; want %q", d, q, got, err, want)
			}
		}
	}
	mount := t.TempDir()
	elsewhere := t.TempDir()
	link := filepath.Join(mount, PodPath(Cgroupfs, Burstable, "/", uid))
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, link); err != nil {
		t.Fatal(err)
	}
	_, err := find(mount, "/", uid)
	if fault.Of(err) != fault.Precondition || !strings.Contains(err.Error(), uid) || !strings.Contains(err.Error(), link) {
		t.Fatalf("got %v", err)
	}
	if n := strings.Count(err.Error(), mount); n != len(Drivers)*len(Classes) {
		t.Fatalf("the error names %d paths, want %d: %v", n, len(Drivers)*len(Classes), err)
	}
}

// A UID that is not a UUID never reaches a path.
func TestFindRefusesBadUID(t *testing.T) {
	_, err := Finder{Root: t.TempDir()}.Find("../../../../etc")
	if fault.Of(err) != fault.Invalid || !strings.Contains(err.Error(), "not a UUID") {
		t.Fatalf("got %v", err)
	}
}

// Where no cgroup2 is mounted (a v1-only node), Find and CheckDir say so.
func TestNoCgroup2(t *testing.T) {
	root := t.TempDir()
	_, err := Finder{Root: root}.Find(uid)
	if fault.Of(err) != fault.Precondition || !strings.Contains(err.Error(), "cgroup2") {
		t.Fatalf("Find: got %v", err)
	}
	if err := CheckDir(root, filepath.Join(root, "x")); fault.Of(err) != fault.Precondition {
		t.Fatalf("CheckDir: got %v", err)
	}
	if err := CheckDir(root, "x/y"); fault.Of(err) != fault.Invalid {
		t.Fatalf("CheckDir of a relative path: got %v", err)
	}
}

// A process's cgroup2 path is its "0::" line; v1 lines are skipped, and a
// path outside the namespace's root, or none at all, is refused.
func TestParseProcCgroup(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"0::/kubepods/pod1/ctr\n", "/kubepods/pod1/ctr", true},
		{"12:pids:/x\n1:name=systemd:/y\n0::/a/b\n", "/a/b", true},
		{"0::/\n", "/", true},
		{"0::/../../outside\n", "", false},
		{"0::relative\n", "", false},
		{"0::/a/../b\n", "", false},
		{"12:pids:/x\n", "", false},
		{"", "", false},
	} {
		got, err := parseProcCgroup(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseProcCgroup(%q) = %q, %v; want %q, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// OfProcess reads this process's own cgroup (on a node with cgroup2).
func TestOfProcessSelf(t *testing.T) {
	p, err := OfProcess(os.Getpid())
	if errors.Is(err, ErrNoCgroup2) {
		t.Skip("skipping: no cgroup2 here")
	}
	if err != nil || !strings.HasPrefix(p, "/") {
		t.Fatalf("OfProcess(self) = %q, %v", p, err)
	}
	if _, err := OfProcess(-1); err == nil {
		t.Error("OfProcess(-1) found a cgroup")
	}
}
