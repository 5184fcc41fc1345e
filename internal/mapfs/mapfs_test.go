package mapfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
)

func TestUnescapeOctal(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`:       "/a b",
		`/tab\011x`:     "/tab\tx",
		`/back\134s`:    `/back\s`,
		`/plain`:        "/plain",
		`/short\04`:     `/short\04`,
		`/not\999octal`: `/not\999octal`,
	} {
		if got := UnescapeMountPath(in); got != want {
			t.Errorf("UnescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOpenTargetRefuses covers targets a publish must refuse before
// anything is loaded; none needs root.
func TestOpenTargetRefuses(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	mk := func(p string) string {
		t.Helper()
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	link := func(to, at string) string {
		t.Helper()
		if err := os.Symlink(to, at); err != nil {
			t.Fatal(err)
		}
		return at
	}
	notEmpty := mk(filepath.Join(root, "etc"))
	if err := os.WriteFile(filepath.Join(notEmpty, "passwd"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(root, "file")
	os.WriteFile(file, nil, 0o644)
	mk(filepath.Join(outside, "empty"))
	dirLink := link(outside, filepath.Join(root, "dirlink"))
	targetLink := link(filepath.Join(outside, "empty"), filepath.Join(root, "targetlink"))
	relLink := link("..", filepath.Join(root, "up"))

	cases := map[string]string{
		"outside the root":            filepath.Join(outside, "vol"),
		"the root itself":             root,
		"not empty":                   notEmpty,
		"a file":                      file,
		"a symlink":                   targetLink,
		"below a symlinked directory": filepath.Join(dirLink, "vol"),
		"below a relative symlink":    filepath.Join(relLink, filepath.Base(outside), "vol"),
		"missing parent":              filepath.Join(root, "missing", "vol"),
		"not clean":                   root + "/a/../b",
		"relative":                    "vol",
	}
	for name, path := range cases {
		t.Run(name, func(t *testing.T) {
			tg, err := OpenTarget(path, []string{root})
			if err == nil {
				tg.Close()
				t.Fatalf("OpenTarget(%q) accepted it", path)
			}
			if k := fault.Of(err); k != fault.Precondition && k != fault.Invalid {
				t.Errorf("kind %v, want precondition or invalid: %v", k, err)
			}
			if !strings.Contains(err.Error(), path) && !strings.Contains(err.Error(), filepath.Dir(path)) {
				t.Errorf("error does not name the path: %v", err)
			}
		})
	}
}

func TestOpenTargetAccepts(t *testing.T) {
	root := t.TempDir()
	// A symlink in the root itself is the administrator's and is followed.
	linkedRoot := filepath.Join(t.TempDir(), "root")
	if err := os.Symlink(root, linkedRoot); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "empty dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for path, existed := range map[string]bool{
		filepath.Join(root, "new"):             false,
		filepath.Join(root, "empty dir"):       true,
		filepath.Join(linkedRoot, "empty dir"): true,
	} {
		tg, err := OpenTarget(path, []string{"/nonexistent", root, linkedRoot})
		if err != nil {
			t.Fatalf("OpenTarget(%q): %v", path, err)
		}
		if tg.Existed != existed {
			t.Errorf("%s: Existed %v, want %v", path, tg.Existed, existed)
		}
		tg.Close()
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting needs root")
	}
}

func newArray(t *testing.T) *ebpf.Map {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.Put(uint32(0), uint64(42)); err != nil {
		t.Fatal(err)
	}
	return m
}

func expose(t *testing.T, root string, name string, opts Options) (staging, target string, made Made) {
	t.Helper()
	staging = filepath.Join(t.TempDir(), "staging")
	target = filepath.Join(root, name)
	tg, err := OpenTarget(target, []string{root})
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	made, err = Expose(staging, tg, map[string]*ebpf.Map{"counts": newArray(t)}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Withdraw(staging, target, made) })
	return staging, target, made
}

// TestReadOnlyHoldsAgainstRoot: this test runs as root, with
// CAP_DAC_OVERRIDE, which ignores the 0440 mode: only a read-only bpffs
// superblock makes a read-write BPF_OBJ_GET fail.
func TestReadOnlyHoldsAgainstRoot(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	_, target, made := expose(t, root, "vol with space", Options{ReadOnly: true, GID: 1234})
	if !made.TargetCreated || made.Dev == 0 {
		t.Fatalf("made %+v, want a created target and a device", made)
	}
	pin := filepath.Join(target, "counts")
	if m, err := ebpf.LoadPinnedMap(pin, nil); !errors.Is(err, unix.EROFS) {
		if err == nil {
			m.Close()
		}
		t.Fatalf("read-write open of a read-only pin as root: %v, want EROFS", err)
	}
	m, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only open: %v", err)
	}
	defer m.Close()
	var v uint64
	if err := m.Lookup(uint32(0), &v); err != nil || v != 42 {
		t.Fatalf("read %d, %v; want 42", v, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(pin, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o777 != ModeReadOnly || st.Gid != 1234 {
		t.Errorf("pin mode %o gid %d, want %o and 1234", st.Mode&0o777, st.Gid, ModeReadOnly)
	}
	mi, err := Inspect(target) // a space in the path: mountinfo escapes it
	if err != nil {
		t.Fatal(err)
	}
	if !mi.Mounted || mi.FSType != "bpf" || !mi.ReadOnly || !mi.SuperReadOnly {
		t.Fatalf("target mount %+v, want a read-only bpf mount of a read-only instance", mi)
	}
}

func TestReadWriteStaysWritable(t *testing.T) {
	requireRoot(t)
	_, target, _ := expose(t, t.TempDir(), "vol", Options{GID: -1})
	m, err := ebpf.LoadPinnedMap(filepath.Join(target, "counts"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), uint64(7)); err != nil {
		t.Fatal(err)
	}
	if mi, _ := Inspect(target); mi.ReadOnly || mi.SuperReadOnly {
		t.Fatalf("read-write target mounted read-only: %+v", mi)
	}
}

// TestWithdrawTouchesOnlyItsOwn: a withdraw removes its own mount and the
// directory it created, and never a foreign mount or a directory it did
// not create.
func TestWithdrawTouchesOnlyItsOwn(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	staging, target, made := expose(t, root, "vol", Options{GID: -1})

	// A foreign tmpfs, and one reached through a symlink.
	foreign := filepath.Join(root, "foreign dir")
	os.Mkdir(foreign, 0o755)
	if err := unix.Mount("tmpfs", foreign, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(foreign, unix.MNT_DETACH)
	viaLink := filepath.Join(root, "link")
	os.Symlink(foreign, viaLink)
	for _, p := range []string{foreign, viaLink} {
		if err := Withdraw("", p, made); err != nil {
			t.Fatal(err)
		}
		if err := Withdraw("", p, Made{TargetCreated: true}); err != nil {
			t.Fatal(err)
		}
	}
	if mi, _ := Inspect(foreign); !mi.Mounted || mi.FSType != "tmpfs" {
		t.Fatalf("foreign tmpfs touched: %+v", mi)
	}

	// Our own target, withdrawn by another volume's device: untouched.
	if err := Withdraw("", target, Made{Dev: made.Dev + 1, TargetCreated: true}); err != nil {
		t.Fatal(err)
	}
	if mi, _ := Inspect(target); !mi.Mounted {
		t.Fatal("a withdraw with another device unmounted the target")
	}
	if err := Withdraw(staging, target, made); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("created target not removed: %v", err)
	}
	if mi, _ := Inspect(staging); mi.Mounted {
		t.Fatal("staging still mounted")
	}

	// A directory that existed before is unmounted but kept.
	kept := filepath.Join(root, "kept")
	os.Mkdir(kept, 0o755)
	tg, err := OpenTarget(kept, []string{root})
	if err != nil {
		t.Fatal(err)
	}
	staging2 := filepath.Join(t.TempDir(), "staging")
	made2, err := Expose(staging2, tg, map[string]*ebpf.Map{"counts": newArray(t)}, Options{GID: -1})
	tg.Close()
	if err != nil {
		t.Fatal(err)
	}
	if made2.TargetCreated {
		t.Fatal("an existing target recorded as created")
	}
	if err := Withdraw(staging2, kept, made2); err != nil {
		t.Fatal(err)
	}
	if mi, _ := Inspect(kept); mi.Mounted {
		t.Fatal("kept target still mounted")
	}
	if _, err := os.Stat(kept); err != nil {
		t.Fatalf("a directory Expose did not create was removed: %v", err)
	}
}

// TestSealReadOnly: a read-only volume exposed writable (by an older
// version) is sealed in place; anything but a bpffs is left alone.
func TestSealReadOnly(t *testing.T) {
	requireRoot(t)
	staging, target, _ := expose(t, t.TempDir(), "vol", Options{GID: -1})
	if err := SealReadOnly(staging); err != nil {
		t.Fatal(err)
	}
	if m, err := ebpf.LoadPinnedMap(filepath.Join(target, "counts"), nil); !errors.Is(err, unix.EROFS) {
		if err == nil {
			m.Close()
		}
		t.Fatalf("read-write open after sealing: %v, want EROFS", err)
	}
	plain := t.TempDir()
	if err := SealReadOnly(plain); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(plain, "f"), nil, 0o600); err != nil {
		t.Fatalf("a plain directory was made read-only: %v", err)
	}
}

// Inspect of a directory nothing is mounted on (what every publish asks of
// its target) costs the same however many mounts the node has: compare
// with the mounted case, which reads mountinfo.
func BenchmarkInspect(b *testing.B) {
	dir := b.TempDir()
	b.Run("not-mounted", func(b *testing.B) {
		for b.Loop() {
			if m, err := Inspect(dir); err != nil || m.Mounted {
				b.Fatal(m, err)
			}
		}
	})
	b.Run("mountinfo", func(b *testing.B) {
		for b.Loop() {
			if _, err := Inspect("/"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestWithdrawOneUnmountPerMount: the target's mount is unmounted by one
// umount(2), a detach through the descriptor that was checked to name it.
// A plain unmount first always failed with EBUSY (that very descriptor
// holds the mount), a wasted system call on every unpublish.
func TestWithdrawOneUnmountPerMount(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	staging, target, made := expose(t, root, "vol", Options{ReadOnly: true, GID: -1})
	var calls []string
	unmount = func(path string, flags int) error {
		calls = append(calls, fmt.Sprintf("%s %#x", path, flags))
		return unix.Unmount(path, flags)
	}
	t.Cleanup(func() { unmount = unix.Unmount })
	if err := Withdraw(staging, target, made); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 || !strings.HasPrefix(calls[0], "/proc/self/fd/") {
		t.Fatalf("umount calls at the target: %q, want one detach through a descriptor", calls)
	}
	if m, _ := Inspect(target); m.Mounted {
		t.Fatalf("target still mounted: %+v", m)
	}
}

func TestEmptyDir(t *testing.T) {
	dir := t.TempDir()
	check := func(want error) {
		t.Helper()
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := emptyDir(fd); !errors.Is(err, want) {
			t.Fatalf("emptyDir of %s: %v, want %v", dir, err, want)
		}
	}
	check(nil)
	if err := os.WriteFile(filepath.Join(dir, ".hidden"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	check(errNotEmpty)
	os.Remove(filepath.Join(dir, ".hidden"))
	// More entries than one read of the directory returns.
	for i := range 200 {
		if err := os.Mkdir(filepath.Join(dir, fmt.Sprintf("d%03d-%s", i, strings.Repeat("x", 40))), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	check(errNotEmpty)
}

// TestZeroTargetCloseTouchesNoDescriptor: a Target not made by OpenTarget
// (the driver's tests fake one) must not close descriptor 0, which its
// zero parent field would name.
func TestZeroTargetCloseTouchesNoDescriptor(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	saved, err := unix.Dup(0)
	if err != nil {
		t.Skipf("descriptor 0 is not open here: %v", err)
	}
	defer func() {
		unix.Dup2(saved, 0)
		unix.Close(saved)
	}()
	if err := unix.Dup2(int(r.Fd()), 0); err != nil {
		t.Fatal(err)
	}
	(&Target{Path: "/x"}).Close()
	if _, err := unix.FcntlInt(0, unix.F_GETFD, 0); err != nil {
		t.Fatalf("closing a zero Target closed descriptor 0: %v", err)
	}
}

// TestWithdrawOrphan: only a bpffs mounted nowhere but below the target
// roots, at no staging directory and on no live device, is unmounted; a
// tmpfs or a bpffs tied to anything else is left and refused.
func TestWithdrawOrphan(t *testing.T) {
	requireRoot(t)
	root, stagingDir := t.TempDir(), t.TempDir()
	staging, target := filepath.Join(stagingDir, "vol"), filepath.Join(root, "vol")
	tg, err := OpenTarget(target, []string{root})
	if err != nil {
		t.Fatal(err)
	}
	made, err := Expose(staging, tg, map[string]*ebpf.Map{"counts": newArray(t)}, Options{GID: -1})
	tg.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Withdraw(staging, target, made) })
	orphans := Orphans{Staging: stagingDir, Roots: []string{root}}
	refused := func(o Orphans, want string) {
		t.Helper()
		n, err := WithdrawOrphan(target, o)
		if n != 0 || fault.Of(err) != fault.Precondition || !strings.Contains(err.Error(), want) {
			t.Fatalf("WithdrawOrphan = %d, %v; want a refusal saying %q", n, err, want)
		}
		if mi, _ := Inspect(target); !mi.Mounted {
			t.Fatal("a bpffs that is not an orphan was unmounted")
		}
	}
	refused(orphans, "staging mount is still there")
	if err := unix.Unmount(staging, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	refused(Orphans{Staging: stagingDir, Roots: []string{root}, Live: []uint64{made.Dev}}, "another volume")
	refused(Orphans{Staging: stagingDir, Roots: []string{stagingDir}}, "outside the target directories")

	if n, err := WithdrawOrphan(target, orphans); n != 1 || err != nil {
		t.Fatalf("WithdrawOrphan of an orphan = %d, %v; want 1 unmount", n, err)
	}
	if mi, _ := Inspect(target); mi.Mounted {
		t.Fatal("the orphan is still mounted")
	}
	if _, err := os.Stat(target); err != nil {
		t.Fatalf("the target directory went: %v (no record says bpfmount created it)", err)
	}
	if n, err := WithdrawOrphan(target, orphans); n != 0 || err != nil {
		t.Fatalf("WithdrawOrphan again = %d, %v; want nothing to do", n, err)
	}
	if n, err := WithdrawOrphan(filepath.Join(root, "missing"), orphans); n != 0 || err != nil {
		t.Fatalf("WithdrawOrphan of a missing target = %d, %v", n, err)
	}

	foreign := filepath.Join(root, "foreign")
	os.Mkdir(foreign, 0o755)
	if err := unix.Mount("tmpfs", foreign, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(foreign, unix.MNT_DETACH)
	n, err := WithdrawOrphan(foreign, orphans)
	if n != 0 || fault.Of(err) != fault.Precondition || !strings.Contains(err.Error(), "tmpfs filesystem") {
		t.Fatalf("WithdrawOrphan of a tmpfs = %d, %v; want a refusal naming it", n, err)
	}
	if mi, _ := Inspect(foreign); !mi.Mounted {
		t.Fatal("a tmpfs was unmounted")
	}

	// A bpffs mounted by hand (defaults, as the node's own) is not taken
	// for an orphan.
	byHand := filepath.Join(root, "by-hand")
	os.Mkdir(byHand, 0o755)
	if err := unix.Mount("bpf", byHand, "bpf", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(byHand, unix.MNT_DETACH)
	n, err = WithdrawOrphan(byHand, orphans)
	if n != 0 || fault.Of(err) != fault.Precondition || !strings.Contains(err.Error(), "not mounted by bpfmount") {
		t.Fatalf("WithdrawOrphan of a bpffs mounted by hand = %d, %v; want a refusal", n, err)
	}
	if mi, _ := Inspect(byHand); !mi.Mounted {
		t.Fatal("a bpffs mounted by hand was unmounted")
	}
}

// TestUnmountBinds: the targets of the instance at staging below the roots
// are unmounted, its staging mount is not, and nothing else is.
func TestUnmountBinds(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	staging, target, _ := expose(t, root, "vol", Options{GID: -1})
	_, other, _ := expose(t, root, "other", Options{GID: -1})
	if got, err := UnmountBinds(staging, []string{t.TempDir()}); len(got) != 0 || err != nil {
		t.Fatalf("UnmountBinds with the target outside the roots = %v, %v; want nothing", got, err)
	}
	got, err := UnmountBinds(staging, []string{root})
	if err != nil || len(got) != 1 || got[0] != target {
		t.Fatalf("UnmountBinds = %v, %v; want [%s]", got, err, target)
	}
	if mi, _ := Inspect(target); mi.Mounted {
		t.Fatal("target still mounted")
	}
	if mi, _ := Inspect(staging); !mi.Mounted {
		t.Fatal("staging unmounted")
	}
	if mi, _ := Inspect(other); !mi.Mounted {
		t.Fatal("another volume's target unmounted")
	}
}
