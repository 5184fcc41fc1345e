package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/internal/testenv"
)

// TestTargetCheckedBeforeLoad: a publish whose target is outside the
// allowed root, not empty, a symlink (to a directory, into the state
// directory, into the bpffs root), below a symlink, or whose parent is
// missing is refused with FailedPrecondition naming the path, before
// anything is fetched, loaded, attached, pinned, mounted or recorded.
func TestTargetCheckedBeforeLoad(t *testing.T) {
	// The allowed root is one directory, so that even a regression mounts
	// nowhere but in the test's own temporary directories; a non-empty
	// /etc-like directory below the root stands in for the host's /etc.
	dir := testenv.ShortTempDir(t)
	elsewhere := testenv.ShortTempDir(t)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Configure: func(o *driver.Options) { o.TargetRoots = []string{dir} }})
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	outside := filepath.Join(elsewhere, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}

	etc := filepath.Join(dir, "etc") // an /etc-like directory: not empty
	if err := os.Mkdir(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(etc, "passwd"), []byte("root:x:0:0::/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	symlink := func(name, to string) string {
		p := filepath.Join(dir, name)
		if err := os.Symlink(to, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	toDir := symlink("to-dir", elsewhere)
	toState := symlink("to-state", filepath.Join(d.StateDir, "mounts"))
	toBPFFS := symlink("to-bpffs", d.BPFFSRoot)
	linkedParent := symlink("linked-parent", elsewhere)

	cases := []struct{ name, target, want string }{
		{"outside the root", outside, "outside"},
		{"not empty", etc, "not empty"},
		{"symlink to a directory", toDir, "symbolic link"},
		{"symlink into the state directory", toState, "symbolic link"},
		{"symlink into the bpffs root", toBPFFS, "symbolic link"},
		{"below a symlink", filepath.Join(linkedParent, "vol"), "symbolic link"},
		{"missing parent", filepath.Join(dir, "missing", "vol"), "does not exist"},
	}
	watched := []string{etc, elsewhere, d.BPFFSRoot, filepath.Join(d.StateDir, "mounts")}
	before := map[string]int{}
	for _, w := range watched {
		before[w] = len(testenv.MountsUnder(t, w))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := d.Node.NodePublishVolume(context.Background(), publishReq("vol-target", c.target, xdpAttrs(img, v.Host), false))
			if status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("publish at %s: %v, want FailedPrecondition", c.target, err)
			}
			msg := status.Convert(err).Message()
			if !strings.Contains(msg, c.want) || !strings.Contains(msg, filepath.Dir(c.target)) {
				t.Errorf("message %q does not say %q and name the path", msg, c.want)
			}
			d.AssertClean(t, v)
			for _, w := range watched {
				if n := len(testenv.MountsUnder(t, w)); n != before[w] {
					t.Errorf("mounts under %s: %d, were %d", w, n, before[w])
				}
			}
		})
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("something was created behind a symlink: %v", ents)
	}
	if _, err := os.Stat(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing parent was created")
	}
}

// TestTargetWithSpace: a target path with a space is found in mountinfo
// (which escapes it), so a second publish keeps the program and its maps,
// a foreign tmpfs at such a path is neither stacked on nor removed.
func TestTargetWithSpace(t *testing.T) {
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	dir := filepath.Join(testenv.ShortTempDir(t), "pod volumes")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	target := filepath.Join(dir, "my vol")
	req := publishReq("vol-space", target, xdpAttrs(img, v.Host), true)
	if _, err := d.Node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	id := testenv.XDPProgram(t, v.Host)
	if err := v.Send(5, 64); err != nil {
		t.Fatal(err)
	}
	p1, _ := counts(t, testenv.Consumer{}, filepath.Join(target, "xdp_stats_map"))
	if _, err := d.Node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("second publish: %v", err)
	}
	if got := testenv.XDPProgram(t, v.Host); got != id {
		t.Fatalf("second publish replaced program %d by %d", id, got)
	}
	if p2, _ := counts(t, testenv.Consumer{}, filepath.Join(target, "xdp_stats_map")); p2 < p1 || p1 < 5 {
		t.Fatalf("counts %d then %d: the maps were reset", p1, p2)
	}
	if m := testenv.MountsUnder(t, target); len(m) != 1 {
		t.Fatalf("mounts at the target: %v, want one", m)
	}

	foreign := filepath.Join(dir, "foreign tmpfs")
	if err := os.Mkdir(foreign, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.MountTmpfs(t, foreign)
	_, err := d.Node.NodePublishVolume(ctx, publishReq("vol-space-2", foreign, xdpAttrs(img, v.Host), false))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "tmpfs") {
		t.Fatalf("publish onto a foreign tmpfs: %v, want FailedPrecondition naming tmpfs", err)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-space-2", foreign)); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("unpublish of an unknown volume at a foreign tmpfs: %v, want FailedPrecondition", err)
	}
	if m := testenv.MountsUnder(t, foreign); len(m) != 1 {
		t.Fatalf("the foreign tmpfs was touched: %v", m)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-space", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, target)
}

// TestUnpublishTouchesOnlyItsOwn: an unpublish with an unknown volume ID,
// or with a real ID and another target, unmounts nothing: not another
// volume's bpffs, not a foreign bpffs or tmpfs, not a tmpfs reached through
// a symlink, and it removes no directory it did not make. An unknown
// volume's unpublish at a target with something mounted fails with
// FailedPrecondition (kubelet could not remove the target); the others
// answer OK.
func TestUnpublishTouchesOnlyItsOwn(t *testing.T) {
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	dir := testenv.ShortTempDir(t)
	ctx := context.Background()

	targetA, targetB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-a", targetA, xdpAttrs(img, v.Host), false)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-b", targetB, xdpAttrs(img, v.Host), false)); err != nil {
		t.Fatal(err)
	}
	mkdir := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	foreignBPF := mkdir("foreign-bpf")
	if err := unix.Mount("bpf", foreignBPF, "bpf", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(foreignBPF, unix.MNT_DETACH) })
	foreignTmpfs := mkdir("foreign-tmpfs")
	testenv.MountTmpfs(t, foreignTmpfs)
	shm := mkdir("shm") // like /dev/shm, reached through a symlink
	testenv.MountTmpfs(t, shm)
	viaLink := filepath.Join(dir, "shm-link")
	if err := os.Symlink(shm, viaLink); err != nil {
		t.Fatal(err)
	}
	empty := mkdir("empty")

	mounted := []string{targetA, targetB, foreignBPF, foreignTmpfs, shm}
	for _, req := range []struct {
		vol, target string
		code        codes.Code
	}{
		{"vol-unknown", targetA, codes.FailedPrecondition}, // another volume's target
		{"vol-unknown", foreignBPF, codes.FailedPrecondition},
		{"vol-unknown", foreignTmpfs, codes.FailedPrecondition},
		{"vol-unknown", viaLink, codes.OK},
		{"vol-unknown", empty, codes.OK},
		{"vol-b", targetA, codes.OK},      // a real ID, another volume's target
		{"vol-a", foreignTmpfs, codes.OK}, // a real ID, not its target
		{"vol-a", foreignBPF, codes.OK},
	} {
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(req.vol, req.target)); status.Code(err) != req.code {
			t.Errorf("unpublish %s at %s: %v, want %s", req.vol, req.target, err, req.code)
		}
		for _, m := range mounted {
			if len(testenv.MountsUnder(t, m)) != 1 {
				t.Fatalf("unpublish %s at %s unmounted %s", req.vol, req.target, m)
			}
		}
	}
	if _, err := os.Stat(empty); err != nil {
		t.Errorf("a directory the driver never created was removed: %v", err)
	}
	if fi, err := os.Lstat(viaLink); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlink was touched: %v", err)
	}
	// Both volumes still work, and their own unpublishes clean up.
	for _, r := range [][2]string{{"vol-a", targetA}, {"vol-b", targetB}} {
		counts(t, testenv.Consumer{}, filepath.Join(r[1], "xdp_stats_map"))
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(r[0], r[1])); err != nil {
			t.Fatal(err)
		}
	}
	d.AssertClean(t, v, targetA, targetB)
}
