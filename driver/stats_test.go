package driver

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/driver/admin"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/loader"
)

// usageLoader is the fake loader with the kernel's account of its programs.
type usageLoader struct {
	*fakeLoader
	usage []loader.Usage
}

func (u *usageLoader) Usage() []loader.Usage { return u.usage }

func newUsageDriver(t *testing.T, runStats bool, usage []loader.Usage, recs ...*state.Record) *Driver {
	t.Helper()
	st := newFakeStore()
	for _, r := range recs {
		if err := st.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	pol := mustPolicy(t, `rules:
- name: web
  namespaces: ["web"]
  images: ["registry.example/bpf/*"]
`)
	opts := Options{NodeID: "n", StateDir: "/state", BPFFSRoot: "/bpffs", RunStats: runStats}
	opts.Policy = policy.Static(pol)
	d, err := newDriver(opts, &usageLoader{fakeLoader: newFakeLoader(), usage: usage}, st, newFakeMounts())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func podRecord(vol, ns, key string) *state.Record {
	return &state.Record{Version: 1, VolumeID: vol, Key: key, Pod: state.Pod{Name: "p", Namespace: ns, UID: "u"},
		Identity: loader.Identity{Digest: "sha256:aa", Program: "xdp_count", Hook: loader.HookXDP, Interface: "eth0"}}
}

// The namespaces label holds only what the policy names: a pod's namespace
// the policy does not name is "other", a local volume "local"; a program
// shared across namespaces is one series; a program no volume records yet
// is not reported.
func TestMetricsProgramsNamespaces(t *testing.T) {
	usage := []loader.Usage{
		{Key: "k1", ID: 10, Identity: loader.Identity{Program: "xdp_count", Hook: loader.HookXDP, Interface: "eth0"},
			Owners: []string{"v-attacker", "v-local", "v-web", "v-web2"}, Run: &loader.RunStats{Count: 5, Time: 3 * time.Microsecond},
			Maps: []loader.MapUsage{{Name: "counts", Bytes: 4096}}},
		{Key: "k2", ID: 11, Identity: loader.Identity{Program: "tc_count", Hook: loader.HookTCX, Direction: loader.Egress, Interface: "eth1"},
			Owners: []string{"v-attacker2"}, Run: &loader.RunStats{Count: 1}},
		{Key: "k3", ID: 12, Identity: loader.Identity{Program: "mid_publish", Hook: loader.HookXDP, Interface: "eth2"},
			Owners: []string{"v-unrecorded"}, Run: &loader.RunStats{Count: 1}},
	}
	d := newUsageDriver(t, true, usage,
		podRecord("v-attacker", "attacker-chosen-namespace", "k1"), podRecord("v-local", "", "k1"),
		podRecord("v-web", "web", "k1"), podRecord("v-web2", "web", "k1"), podRecord("v-attacker2", "kube-system", "k2"))
	got := d.metricsPrograms()
	if len(got) != 2 {
		t.Fatalf("metricsPrograms = %+v; want k1 and k2 (k3 has no record yet)", got)
	}
	if got[0].Name != "xdp_count" || got[0].Hook != "xdp" || got[0].Interface != "eth0" || got[0].ID != 10 {
		t.Errorf("k1 = %+v", got[0])
	}
	if ns := strings.Join(got[0].Namespaces, ","); ns != "other,local,web,web" {
		t.Errorf("k1 namespaces = %q; want other,local,web,web (the collector dedups)", ns)
	}
	if got[0].Run == nil || got[0].Run.Count != 5 || got[0].Run.Seconds != 3e-6 {
		t.Errorf("k1 run = %+v", got[0].Run)
	}
	if len(got[0].Maps) != 1 || got[0].Maps[0].Bytes != 4096 {
		t.Errorf("k1 maps = %+v", got[0].Maps)
	}
	if got[1].Hook != "tcx/egress" || strings.Join(got[1].Namespaces, ",") != "other" {
		t.Errorf("k2 = %+v; want hook tcx/egress, namespaces other", got[1])
	}
}

// Without run-time statistics held enabled, no run values are reported:
// the kernel's counters stand still, and zeros would read as idle.
func TestMetricsProgramsWithoutRunStats(t *testing.T) {
	usage := []loader.Usage{{Key: "k1", ID: 10, Identity: loader.Identity{Program: "xdp_count", Hook: loader.HookXDP, Interface: "eth0"},
		Owners: []string{"v"}, Run: &loader.RunStats{}, Maps: []loader.MapUsage{{Name: "counts", Bytes: 64, Estimated: true}}}}
	d := newUsageDriver(t, false, usage, podRecord("v", "web", "k1"))
	got := d.metricsPrograms()
	if len(got) != 1 || got[0].Run != nil {
		t.Fatalf("metricsPrograms = %+v; want one program without run statistics", got)
	}
	if len(got[0].Maps) != 1 || !got[0].Maps[0].Estimated {
		t.Errorf("maps = %+v; map memory is reported regardless", got[0].Maps)
	}
	vols, err := adminServer{d}.ListVolumes(context.Background(), &admin.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	v := vols.Volumes[0]
	if v.RunCount != nil || v.RunTimeNs != nil {
		t.Errorf("list reports run statistics that are not collected: %+v", v)
	}
	if v.MapBytes == nil || *v.MapBytes != 64 || !v.MapBytesEstimated {
		t.Errorf("list map bytes = %v, estimated %t", v.MapBytes, v.MapBytesEstimated)
	}
}

// list adds what the loader holds for each volume's program; a broken
// volume and a volume whose program the loader does not hold get none.
func TestListVolumesUsage(t *testing.T) {
	usage := []loader.Usage{{Key: "k1", ID: 10, Identity: loader.Identity{Program: "xdp_count", Hook: loader.HookXDP, Interface: "eth0"},
		Owners: []string{"a", "b"}, Attached: true, Run: &loader.RunStats{Count: 4, Time: 2 * time.Microsecond},
		Maps: []loader.MapUsage{{Name: "counts", Bytes: 100}, {Name: "events", Bytes: 28}}}}
	broken := podRecord("c", "web", "k1")
	broken.Broken = "pins gone after a reboot"
	d := newUsageDriver(t, true, usage, podRecord("a", "web", "k1"), podRecord("b", "", "k1"), broken, podRecord("d", "web", "gone"))
	resp, err := adminServer{d}.ListVolumes(context.Background(), &admin.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Volumes) != 4 {
		t.Fatalf("%d volumes", len(resp.Volumes))
	}
	for _, v := range resp.Volumes[:2] {
		if v.Attached == nil || !*v.Attached || v.SharedBy != 2 || v.RunCount == nil || *v.RunCount != 4 ||
			v.RunTimeNs == nil || *v.RunTimeNs != 2000 || v.MapBytes == nil || *v.MapBytes != 128 || v.MapBytesEstimated {
			t.Errorf("volume %s: %+v", v.VolumeID, v)
		}
	}
	for _, v := range resp.Volumes[2:] {
		if v.Attached != nil || v.RunCount != nil || v.MapBytes != nil || v.SharedBy != 0 {
			t.Errorf("volume %s, whose program the loader does not hold, has usage: %+v", v.VolumeID, v)
		}
	}
	if resp.Volumes[2].Broken != broken.Broken {
		t.Errorf("broken = %q", resp.Volumes[2].Broken)
	}
}
