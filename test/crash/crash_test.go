// Package crash kills the daemon at every step of publish and unpublish,
// starts it again, lets a kubelet-like retry loop finish, and compares the
// machine with the state the operation promised: a crash anywhere leaves
// neither a program that no volume owns nor a record that points at nothing.
package crash

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/mapfs"
	"github.com/bpfmount/bpfmount/internal/testenv"
)

var (
	daemonBin string
	binDir    string
)

func TestMain(m *testing.M) {
	testenv.RunHelperIfAsked()
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// bin builds the daemon with failpoints compiled in, once per test binary.
func bin(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	if daemonBin == "" {
		dir, err := os.MkdirTemp("", "bpfmount-failpoints")
		if err != nil {
			t.Fatal(err)
		}
		binDir = dir
		daemonBin = testenv.BuildDaemonTo(t, "failpoints", filepath.Join(dir, "bpfmount"))
	}
	return daemonBin
}

// mountGroup is the pod's fsGroup: the pins must belong to it.
const mountGroup = 4242

func publishReq(vol, target, image, ifname string) *csi.NodePublishVolumeRequest {
	req := testenv.PublishRequest(vol, target, map[string]string{"image": image, "interface": ifname}, true)
	req.VolumeCapability = testenv.MountCapability(strconv.Itoa(mountGroup))
	return req
}

// retry calls op until it succeeds, as kubelet does.
func retry(t *testing.T, what string, op func() error) {
	t.Helper()
	var err error
	for i := 0; i < 20; i++ {
		if err = op(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never succeeded: %v", what, err)
}

// crashAt starts p set to crash at step and makes the call that reaches it:
// the call must fail and the daemon must exit. It then starts p plainly and
// retries the call until it succeeds, as kubelet would.
func crashAt(t *testing.T, p *testenv.ProcDaemon, step, what string, call func() error) {
	t.Helper()
	p.Start(t, failpoint.Env+"="+step)
	if err := call(); err == nil {
		t.Fatalf("%s succeeded although the daemon was to crash at %s", what, step)
	}
	if !p.Exited(5 * time.Second) {
		t.Fatalf("the daemon did not crash at %s", step)
	}
	p.Start(t)
	retry(t, what, call)
}

// assertPublished checks the one promised end state of a publish.
func assertPublished(t *testing.T, p *testenv.ProcDaemon, v *testenv.Veth, target string) {
	t.Helper()
	if m := testenv.MountsUnder(t, target); len(m) != 1 {
		t.Fatalf("target mounts %v, want exactly one", m)
	}
	if f := testenv.Files(t, filepath.Join(p.StateDir, "volumes")); len(f) != 1 {
		t.Fatalf("records %v, want one", f)
	}
	if f := testenv.Files(t, filepath.Join(p.StateDir, "intents")); len(f) != 0 {
		t.Fatalf("intents left: %v", f)
	}
	dirs, _ := os.ReadDir(filepath.Join(p.BPFFSRoot, "programs"))
	if len(dirs) != 1 {
		t.Fatalf("%d pin directories, want 1", len(dirs))
	}
	if testenv.XDPProgram(t, v.Host) == 0 {
		t.Fatal("no XDP program attached")
	}
	pin := filepath.Join(target, "xdp_stats_map")
	if _, code := testenv.RunConsumer(t, testenv.Consumer{}, "read-counter", pin); code != 0 {
		t.Fatal("the published map cannot be read")
	}
	assertReadOnly(t, target, pin)
}

// assertReadOnly checks what a read-only volume promises, whichever step
// the daemon was killed at: a read-only mount of a read-only bpffs, 0440
// pins of the pod's group, and no write even for root.
func assertReadOnly(t *testing.T, target, pin string) {
	t.Helper()
	m, err := mapfs.Inspect(target)
	if err != nil {
		t.Fatal(err)
	}
	if !m.ReadOnly || !m.SuperReadOnly {
		t.Errorf("target %+v: want a read-only mount of a read-only bpffs", m)
	}
	var st unix.Stat_t
	if err := unix.Stat(pin, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o777 != mapfs.ModeReadOnly || st.Gid != mountGroup {
		t.Errorf("pin mode %o group %d, want %o and %d", st.Mode&0o777, st.Gid, mapfs.ModeReadOnly, mountGroup)
	}
	if out, code := testenv.RunConsumer(t, testenv.Consumer{}, "write-map", pin); code == testenv.HelperOK || !strings.Contains(out, "read-only file system") {
		t.Errorf("root writing through the read-only volume: exit %d (%s), want EROFS", code, strings.TrimSpace(out))
	}
}

func TestCrashDuringPublish(t *testing.T) {
	b := bin(t)
	for _, step := range failpoint.PublishSteps {
		t.Run(step, func(t *testing.T) {
			p := testenv.NewProcDaemon(t, b)
			v := testenv.NewVeth(t)
			img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
			target := filepath.Join(testenv.ShortTempDir(t), "vol")
			req := publishReq("vol-crash", target, img, v.Host)

			crashAt(t, p, step, "publish", func() error { _, err := p.Node.NodePublishVolume(testenv.Ctx(t), req); return err })
			assertPublished(t, p, v, target)

			if _, err := p.Node.NodeUnpublishVolume(testenv.Ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-crash", TargetPath: target}); err != nil {
				t.Fatal(err)
			}
			testenv.AssertClean(t, p.StateDir, p.BPFFSRoot, v, target)
		})
	}
}

func TestCrashDuringUnpublish(t *testing.T) {
	b := bin(t)
	for _, step := range failpoint.UnpublishSteps {
		t.Run(step, func(t *testing.T) {
			p := testenv.NewProcDaemon(t, b)
			v := testenv.NewVeth(t)
			img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
			target := filepath.Join(testenv.ShortTempDir(t), "vol")
			unreq := &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-crash", TargetPath: target}

			p.Start(t)
			if _, err := p.Node.NodePublishVolume(testenv.Ctx(t), publishReq("vol-crash", target, img, v.Host)); err != nil {
				t.Fatal(err)
			}
			p.Kill()
			crashAt(t, p, step, "unpublish", func() error { _, err := p.Node.NodeUnpublishVolume(testenv.Ctx(t), unreq); return err })
			testenv.AssertClean(t, p.StateDir, p.BPFFSRoot, v, target)
		})
	}
}

// TestSIGTERMFinishesInFlightCalls: a publish under way when SIGTERM comes
// completes, and its program stays attached after the exit.
func TestSIGTERMKeepsPrograms(t *testing.T) {
	p := testenv.NewProcDaemon(t, bin(t))
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	target := filepath.Join(testenv.ShortTempDir(t), "vol")
	p.Start(t)
	if _, err := p.Node.NodePublishVolume(context.Background(), publishReq("vol-term", target, img, v.Host)); err != nil {
		t.Fatal(err)
	}
	id := testenv.XDPProgram(t, v.Host)
	p.Terminate(t)
	if got := testenv.XDPProgram(t, v.Host); got != id {
		t.Fatalf("after SIGTERM the XDP program is %d, want %d", got, id)
	}
	p.Start(t)
	if _, err := p.Node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-term", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	testenv.AssertClean(t, p.StateDir, p.BPFFSRoot, v, target)
}
