package driver

import (
	"context"
	"testing"

	"github.com/bpfmount/bpfmount/driver/admin"
	"github.com/bpfmount/bpfmount/loader"
)

// countingUsageLoader counts the loader's usage queries (a kernel query
// per program in the real loader).
type countingUsageLoader struct {
	*usageLoader
	calls int
}

func (c *countingUsageLoader) Usage() []loader.Usage { c.calls++; return c.usageLoader.Usage() }

// ListVolumes with targets returns only the volumes there; without usage
// asked it queries the loader not once, and a request without the field
// (an older client) still gets usage.
func TestListVolumesTargetsWithoutUsage(t *testing.T) {
	usage := []loader.Usage{{Key: "k1", ID: 10, Owners: []string{"a", "b"}, Attached: true}}
	a, b := podRecord("a", "web", "k1"), podRecord("b", "web", "k1")
	a.TargetPath, b.TargetPath = "/run/bpf/a", "/run/bpf/b"
	d := newUsageDriver(t, true, usage, a, b)
	cl := &countingUsageLoader{usageLoader: d.loader.(*usageLoader)}
	d.loader = cl

	no := false
	resp, err := adminServer{d}.ListVolumes(context.Background(), &admin.ListVolumesRequest{Targets: []string{"/run/bpf/b/", "/elsewhere"}, Usage: &no})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Volumes) != 1 || resp.Volumes[0].VolumeID != "b" {
		t.Fatalf("volumes at /run/bpf/b = %+v; want b only", resp.Volumes)
	}
	if v := resp.Volumes[0]; v.Attached != nil || v.SharedBy != 0 || cl.calls != 0 {
		t.Errorf("usage not asked, yet the loader was queried %d times, volume %+v", cl.calls, v)
	}

	resp, err = adminServer{d}.ListVolumes(context.Background(), &admin.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Volumes) != 2 || resp.Volumes[0].Attached == nil || resp.Volumes[0].SharedBy != 2 || cl.calls != 1 {
		t.Errorf("a request without the usage field = %+v after %d loader queries; want both volumes with usage", resp.Volumes, cl.calls)
	}
}
