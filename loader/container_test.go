package loader

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// A container's uprobe needs a pod, a container name that is a DNS label
// and a uprobe type; nothing else attaches in a container.
func TestCheckContainer(t *testing.T) {
	ok := Identity{Hook: HookUprobe, Pod: "3c1e7a52-9d0b-4f6e-8a21-5b4c3d2e1f00", Container: "app", AttachTo: "/bin/app:main"}
	if err := checkDeferred(ok); err != nil {
		t.Fatal(err)
	}
	ret := ok
	ret.Hook = HookUretprobe
	if err := checkDeferred(ret); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Identity)
		want string
	}{
		{"tracepoint", func(id *Identity) { id.Hook = HookTracepoint }, "applies to uprobe and uretprobe"},
		{"xdp", func(id *Identity) { id.Hook, id.Interface = HookXDP, "eth0" }, "applies to uprobe and uretprobe"},
		{"no pod", func(id *Identity) { id.Pod = "" }, "names no pod"},
		{"bad name", func(id *Identity) { id.Container = "App" }, "not a container name"},
		{"long name", func(id *Identity) { id.Container = strings.Repeat("a", 64) }, "not a container name"},
		{"netns", func(id *Identity) { id.Netns = "/proc/1/ns/net" }, "takes no interface"},
	} {
		id := ok
		tc.mod(&id)
		err := checkDeferred(id)
		if fault.Of(err) != fault.Invalid || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want Invalid with %q", tc.name, err, tc.want)
		}
	}
	if ok.Key() == (Identity{Hook: HookUprobe, Pod: ok.Pod, Container: "other", AttachTo: ok.AttachTo}).Key() {
		t.Error("two containers share a key")
	}
}

// procStart names one process: stable for a live one, an error naming the
// process for one that is gone.
func TestProcStart(t *testing.T) {
	a, err := procStart(os.Getpid())
	if err != nil || a == 0 {
		t.Fatalf("own start time %d, %v", a, err)
	}
	if b, _ := procStart(os.Getpid()); b != a {
		t.Fatalf("start time changed: %d then %d", a, b)
	}
	if _, err := procStart(1 << 30); fault.Of(err) != fault.Precondition {
		t.Fatalf("no such process: got %v", err)
	}
}

// openInRoot opens regular files only, and says which path is missing.
func TestOpenInRoot(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f, err := openInRoot(os.Getpid(), exe)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := openInRoot(os.Getpid(), "/no/such/binary"); fault.Of(err) != fault.NotFound || !strings.Contains(err.Error(), "/no/such/binary") {
		t.Errorf("missing: got %v", err)
	}
	if _, err := openInRoot(os.Getpid(), os.TempDir()); fault.Of(err) != fault.Invalid || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: got %v", err)
	}
}

// openBeneath opens a directory under the mount only: ".." and symbolic
// links that lead out are refused.
func TestOpenBeneath(t *testing.T) {
	mount := t.TempDir()
	if err := os.MkdirAll(filepath.Join(mount, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(os.TempDir(), filepath.Join(mount, "out")); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{"/", "/a", "/a/b"} {
		fd, err := openBeneath(mount, rel)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			continue
		}
		unix.Close(fd)
	}
	for _, rel := range []string{"/..", "/a/../../x", "/out"} {
		if fd, err := openBeneath(mount, rel); err == nil {
			unix.Close(fd)
			t.Errorf("%s: opened outside the mount", rel)
		}
	}
}
