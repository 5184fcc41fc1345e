package loader_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// A container's uprobe is kept to the container's cgroup2 cgroup: where
// the cgroup root holds no cgroup2 hierarchy (a cgroup v1 node), the
// attach fails with Precondition naming cgroup v2 and leaves no link and
// no filter behind, never falling back to an unfiltered probe.
func TestContainerAttachNeedsCgroup2(t *testing.T) {
	testenv.RequireRoot(t)
	root := filepath.Join(testenv.BPFFS(t), "bpfmount")
	l, err := loader.New(loader.Options{Root: root, Fetcher: bytecode.Layout{}, NodeName: "test-node", CgroupRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	img := testenv.Layout(t, testenv.TraceCountObject, "v1")
	const uid = "5d2c1b0a-3e4f-4a6b-9c8d-7e6f5a4b3c2d"
	req := loader.Request{Image: bytecode.Request{Reference: img}, Program: "count_uprobe", Hook: loader.HookUprobe,
		Pod: uid, Container: "app", AttachTo: exe + ":main.main"}
	r, err := l.Resolve(testenv.Ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	p, err := l.Acquire(testenv.Ctx(t), r, "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.AttachContainer(p.Key, os.Getpid())
	if fault.Of(err) != fault.Precondition || !strings.Contains(err.Error(), "cgroup v2") {
		t.Fatalf("attach without cgroup2: got %v, want Precondition naming cgroup v2", err)
	}
	if _, err := os.Stat(filepath.Join(root, "programs", p.Key, "program")); err != nil {
		t.Fatalf("the loaded program's pin: %v", err)
	}
	for _, pin := range []string{"link", "filter-program", "filter-cgroup"} {
		if _, err := os.Lstat(filepath.Join(root, "programs", p.Key, pin)); err == nil {
			t.Errorf("a failed attach left the %s pin", pin)
		}
	}
	if err := l.Release(p.Key, "vol-1"); err != nil {
		t.Fatal(err)
	}
}
