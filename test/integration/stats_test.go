package integration

import (
	"context"
	"net"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/admin"
	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
)

// series returns the samples of one metric whose id label is id, each as
// its labels and value.
func series(t *testing.T, srv *httptest.Server, metric string, id uint32) []map[string]string {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]string
	f := fams[metric]
	if f == nil {
		return nil
	}
	for _, m := range f.Metric {
		l := map[string]string{}
		for _, lp := range m.Label {
			l[lp.GetName()] = lp.GetValue()
		}
		if l["id"] != strconv.FormatUint(uint64(id), 10) {
			continue
		}
		v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
		l["value"] = strconv.FormatFloat(v, 'g', -1, 64)
		out = append(out, l)
	}
	return out
}

func value(t *testing.T, l map[string]string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(l["value"], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// one returns the only sample of metric for program id.
func one(t *testing.T, srv *httptest.Server, metric string, id uint32) map[string]string {
	t.Helper()
	s := series(t, srv, metric, id)
	if len(s) != 1 {
		t.Fatalf("%d %s series for program %d, want 1: %v", len(s), metric, id, s)
	}
	return s[0]
}

// listVolumes asks d's admin service, as `bpfmount list` does.
func listVolumes(t *testing.T, d *driver.Driver, dir string) []admin.Volume {
	t.Helper()
	sock := filepath.Join(dir, "admin.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	driver.RegisterAdmin(srv, d)
	go srv.Serve(l)
	defer srv.Stop()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := admin.NewClient(conn).ListVolumes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Volumes
}

// The run count and run time of a program rise as frames flow through it,
// its maps' memory is reported, and the series name the namespaces of the
// pods using it as the policy names them.
func TestProgramStatsRiseWithTraffic(t *testing.T) {
	testenv.RequireRoot(t)
	hold, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		t.Fatalf("enabling run-time statistics: %v", err)
	}
	defer hold.Close()
	// "web" is named; "team-x" is allowed by a glob only, so it is
	// "other"; the CLI's volume is "local".
	pol, err := policy.Parse([]byte("apiVersion: bpfmount.io/v1alpha1\nkind: NodePolicy\nrules:\n- name: web\n  namespaces: [web, \"team-*\"]\n  images: [\"oci:/**\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	// Where the kernel chains, XDP programs run as dispatcher members
	// (freplace), and the kernel keeps no run statistics of their own for
	// extension programs: measure a tcx program there.
	obj, hook, extra := testenv.XDPCounterObject, "xdp", map[string]string{}
	if dispatcher.Supported() == nil {
		obj, hook, extra = testenv.TCXOrderObject, "tcx/ingress", map[string]string{"type": "tcx", "direction": "ingress"}
	}
	d, v, img, dir := setup(t, obj, testenv.DaemonOptions{Configure: func(o *driver.Options) {
		o.Policy, o.RunStats = policy.Static(pol), true
	}})
	with := func(a map[string]string) map[string]string {
		for k, v := range extra {
			a[k] = v
		}
		return a
	}
	srv := httptest.NewServer(metrics.Handler())
	defer srv.Close()
	ctx := context.Background()

	vols := map[string]map[string]string{
		"vol-local": with(xdpAttrs(img, v.Host)),
		"vol-web":   with(podAttrs(img, v.Host, "web")),
		"vol-team":  with(podAttrs(img, v.Host, "team-x")),
	}
	for vol, attrs := range vols {
		if _, err := d.Node.NodePublishVolume(ctx, publishReq(vol, filepath.Join(dir, vol), attrs, true)); err != nil {
			t.Fatalf("publish %s: %v", vol, err)
		}
	}
	rec, err := d.Record("vol-web")
	if err != nil || rec == nil {
		t.Fatalf("no record: %v", err)
	}
	id := rec.ProgramID

	first := one(t, srv, "bpfmount_program_run_count_total", id)
	want := map[string]string{"program": rec.Identity.Program, "hook": hook, "interface": v.Host, "namespaces": "local,other,web"}
	for k, w := range want {
		if first[k] != w {
			t.Errorf("run count label %s = %q, want %q (all labels: %v)", k, first[k], w, first)
		}
	}
	firstTime := value(t, one(t, srv, "bpfmount_program_run_seconds_total", id))

	if err := v.Send(50, 100); err != nil {
		t.Fatal(err)
	}
	second := value(t, one(t, srv, "bpfmount_program_run_count_total", id))
	if second < value(t, first)+50 {
		t.Errorf("run count went from %v to %v after 50 frames", value(t, first), second)
	}
	if secondTime := value(t, one(t, srv, "bpfmount_program_run_seconds_total", id)); secondTime <= firstTime {
		t.Errorf("run time went from %v to %v after 50 frames", firstTime, secondTime)
	}

	mem := series(t, srv, "bpfmount_map_memory_bytes", id)
	if len(mem) == 0 {
		t.Fatal("no map memory series")
	}
	for _, m := range mem {
		// This kernel reports what it charges each map.
		if m["source"] != metrics.SourceKernel || value(t, m) <= 0 || m["namespaces"] != "local,other,web" {
			t.Errorf("map memory series %v", m)
		}
	}

	// bpfmount list reads the same from the kernel.
	listed := listVolumes(t, d.Driver, dir)
	if len(listed) != 3 {
		t.Fatalf("list: %d volumes, want 3", len(listed))
	}
	for _, lv := range listed {
		if lv.RunCount == nil || float64(*lv.RunCount) < second || lv.RunTimeNs == nil || *lv.RunTimeNs == 0 {
			t.Errorf("list %s: run count %v, time %v; want at least %v runs", lv.VolumeID, lv.RunCount, lv.RunTimeNs, second)
		}
		if lv.MapBytes == nil || *lv.MapBytes == 0 || lv.MapBytesEstimated || lv.SharedBy != 3 || lv.Attached == nil || !*lv.Attached {
			t.Errorf("list %s: %+v", lv.VolumeID, lv)
		}
	}

	for vol := range vols {
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(vol, filepath.Join(dir, vol))); err != nil {
			t.Fatalf("unpublish %s: %v", vol, err)
		}
	}
	if s := series(t, srv, "bpfmount_program_run_count_total", id); len(s) != 0 {
		t.Errorf("series of an unloaded program: %v", s)
	}
	d.AssertClean(t, v, filepath.Join(dir, "vol-local"), filepath.Join(dir, "vol-web"), filepath.Join(dir, "vol-team"))
}

// A daemon that does not hold run-time statistics exports no run series
// (not zeros), and still the maps' memory.
func TestProgramStatsOffExportsNoRuns(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	srv := httptest.NewServer(metrics.Handler())
	defer srv.Close()
	target := filepath.Join(dir, "vol")
	ctx := context.Background()
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-nostats", target, xdpAttrs(img, v.Host), true)); err != nil {
		t.Fatal(err)
	}
	rec, err := d.Record("vol-nostats")
	if err != nil || rec == nil {
		t.Fatalf("no record: %v", err)
	}
	if s := series(t, srv, "bpfmount_program_run_count_total", rec.ProgramID); len(s) != 0 {
		t.Errorf("run series without run-time statistics: %v", s)
	}
	if s := series(t, srv, "bpfmount_map_memory_bytes", rec.ProgramID); len(s) == 0 {
		t.Error("no map memory series")
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-nostats", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, target)
}
