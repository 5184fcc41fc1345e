// Package integration tests the driver end to end on the real kernel: real
// programs attached to veths whose peers live in network namespaces the
// tests create, frames sent through them, and maps read through the mounted
// volumes by consumer processes in their own mount namespaces.
package integration

import (
	"os"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.RunHelperIfAsked()
	os.Exit(m.Run())
}

func mountCap(gid string) *csi.VolumeCapability { return testenv.MountCapability(gid) }

func publishReq(vol, target string, attrs map[string]string, readOnly bool) *csi.NodePublishVolumeRequest {
	return testenv.PublishRequest(vol, target, attrs, readOnly)
}

func unpublishReq(vol, target string) *csi.NodeUnpublishVolumeRequest {
	return &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target}
}

// setup is how most tests start: a daemon, a veth whose peer sits in its own
// network namespace, an OCI layout of object (none when object is ""), and
// a short directory for targets. Everything is removed when the test ends.
func setup(t *testing.T, object string, opts testenv.DaemonOptions) (d *testenv.Daemon, v *testenv.Veth, img, dir string) {
	t.Helper()
	d = testenv.StartDaemon(t, opts)
	v = testenv.NewVeth(t)
	if object != "" {
		img = testenv.Layout(t, object, "v1")
	}
	return d, v, img, testenv.ShortTempDir(t)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
