package cri

import (
	"context"
	"testing"

	"github.com/bpfmount/bpfmount/internal/cri/critest"
)

// Only containerd 2.0 and later are taken as serving several event
// subscribers; a version that does not parse is not.
func TestEventsSafe(t *testing.T) {
	for _, tc := range []struct {
		name, version string
		want          bool
	}{
		{"containerd", "v2.0.1", true},
		{"containerd", "2.1.0-rc.1", true},
		{"containerd", "v2.0.0+unknown", true},
		{"containerd", "v10.3", true},
		{"containerd", "1.7.24", false},
		{"containerd", "v1.7.0-beta.0", false},
		{"containerd", "v1.6.33", false},
		{"containerd", "", false},
		{"containerd", "v2", false},
		{"containerd", "devel", false},
		{"containerd", "2.x.0", false},
		{"containerd", "v2.0.1.4", false},
		{"containerd", "-2.0", false},
		{"containerd", "+2.0", false},
		{"cri-o", "1.31.0", false},
		{"", "v2.0.0", false},
	} {
		got, why := EventsSafe(tc.name, tc.version)
		if got != tc.want || (!got && why == "") {
			t.Errorf("EventsSafe(%q, %q) = %v, %q; want %v and a reason when false", tc.name, tc.version, got, why, tc.want)
		}
	}
}

func TestRuntimeVersion(t *testing.T) {
	rt, ep := critest.Start(t)
	rt.SetVersion("containerd", "1.7.24")
	c, err := Dial(ep)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	name, v, err := c.RuntimeVersion(context.Background())
	if err != nil || name != "containerd" || v != "1.7.24" {
		t.Fatalf("RuntimeVersion: %q %q %v", name, v, err)
	}
}
