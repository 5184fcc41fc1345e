package vm

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	xdpbpf "github.com/bpfmount/bpfmount/deploy/examples/xdp-counter/bpf"
	"github.com/bpfmount/bpfmount/deploy/examples/xdp-counter/counter"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/test/programs"
)

// These tests drive the whole driver (gRPC, loader, dispatcher, volumes) in
// the VM, where the kernel runs dispatchers: programs from several volumes
// on one interface, chained by priority and proceedOn.

func volReq(vol, target string, attrs map[string]string) *csi.NodePublishVolumeRequest {
	return testenv.PublishRequest(vol, target, attrs, true)
}

func packets(t *testing.T, target string) uint64 {
	t.Helper()
	c, err := counter.Read(filepath.Join(target, "xdp_stats_map"))
	if err != nil {
		t.Fatal(err)
	}
	return c.Packets
}

func TestDriverXDPChainFromVolumes(t *testing.T) {
	requireVM(t)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	if !d.Loader.CanChain() {
		t.Fatal("the driver did not detect dispatcher support in the VM")
	}
	v := testenv.NewVeth(t)
	img := testenv.LayoutBytes(t, xdpbpf.Object(), "xdp_counter.o", "v1")
	dir := testenv.ShortTempDir(t)
	ctx := context.Background()
	target := func(vol string) string { return filepath.Join(dir, vol) }
	publish := func(vol string, attrs map[string]string) error {
		_, err := d.Node.NodePublishVolume(ctx, volReq(vol, target(vol), attrs))
		return err
	}
	attrs := func(prio int, kv ...string) map[string]string {
		a := map[string]string{"image": img, "interface": v.Host, "priority": fmt.Sprint(prio)}
		for i := 0; i < len(kv); i += 2 {
			a[kv[i]] = kv[i+1]
		}
		return a
	}
	// Published out of order; vol-stop's program passes frames, and with
	// proceedOn=dispatcher_return a pass ends the chain there.
	for _, p := range []struct {
		vol   string
		attrs map[string]string
	}{
		{"vol-last", attrs(30)},
		{"vol-first", attrs(10)},
		{"vol-stop", attrs(20, "proceedOn", "dispatcher_return")},
	} {
		if err := publish(p.vol, p.attrs); err != nil {
			t.Fatalf("publish %s: %v", p.vol, err)
		}
	}
	// Count deltas: the peer's own frames (IPv6 DAD, router solicitations)
	// may have met a shorter chain while the volumes were being published.
	f0, s0, l0 := packets(t, target("vol-first")), packets(t, target("vol-stop")), packets(t, target("vol-last"))
	if err := v.Send(20, 64); err != nil {
		t.Fatal(err)
	}
	if f, s, l := packets(t, target("vol-first"))-f0, packets(t, target("vol-stop"))-s0, packets(t, target("vol-last"))-l0; f < 20 || s < 20 || l != 0 {
		t.Fatalf("first/stop/last counted %d/%d/%d more; want >=20, >=20, 0 (the chain stops at priority 20)", f, s, l)
	}
	dispatcherID := testenv.XDPProgram(t, v.Host)
	for _, vol := range []string{"vol-first", "vol-stop", "vol-last"} {
		rec, _ := d.Record(vol)
		if rec.ProgramID == dispatcherID {
			t.Fatal("a member is attached directly instead of through the dispatcher")
		}
	}

	// Removing the stopper lets frames reach the last program.
	if _, err := d.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-stop", TargetPath: target("vol-stop")}); err != nil {
		t.Fatal(err)
	}
	l1 := packets(t, target("vol-last"))
	v.Send(20, 64)
	if l := packets(t, target("vol-last")) - l1; l < 20 {
		t.Fatalf("after unpublishing the stopper, the last program counted %d more", l)
	}

	// Fill the ten slots at once (coalesced), then an eleventh.
	var wg sync.WaitGroup
	errs := make([]error, 8)
	before := revisions(d)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); errs[i] = publish(fmt.Sprint("vol-fill-", i), attrs(40+i)) }(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("fill %d: %v", i, err)
		}
	}
	built := revisions(d) - before
	t.Logf("8 concurrent publishes built %d dispatcher revisions", built)
	if built >= 8 {
		t.Errorf("8 concurrent publishes built %d revisions; they should coalesce", built)
	}
	err := publish("vol-eleventh", attrs(99))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "vol-first") || !strings.Contains(status.Convert(err).Message(), v.Host) {
		t.Fatalf("eleventh program: %v; want ResourceExhausted naming the interface and the volumes", err)
	}

	// All ten run on every frame.
	ten := []string{"vol-first", "vol-last"}
	for i := 0; i < 8; i++ {
		ten = append(ten, fmt.Sprint("vol-fill-", i))
	}
	base := map[string]uint64{}
	for _, vol := range ten {
		base[vol] = packets(t, target(vol))
	}
	if err := v.Send(20, 64); err != nil {
		t.Fatal(err)
	}
	for _, vol := range ten {
		if d := packets(t, target(vol)) - base[vol]; d < 20 {
			t.Errorf("%s counted %d of 20 frames with ten programs chained", vol, d)
		}
	}

	// A restart keeps the chain attached and counting.
	d.Restart(testenv.DaemonOptions{})
	if got := testenv.XDPProgram(t, v.Host); got == 0 {
		t.Fatal("no dispatcher attached after restart")
	}
	before1 := packets(t, target("vol-first"))
	v.Send(10, 64)
	if after := packets(t, target("vol-first")); after < before1+10 {
		t.Fatalf("after restart: %d -> %d", before1, after)
	}

	vols := []string{"vol-first", "vol-last"}
	for i := 0; i < 8; i++ {
		vols = append(vols, fmt.Sprint("vol-fill-", i))
	}
	var targets []string
	for _, vol := range vols {
		if _, err := d.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target(vol)}); err != nil {
			t.Fatal(err)
		}
		targets = append(targets, target(vol))
	}
	d.AssertClean(t, v, targets...)
}

func revisions(d *testenv.Daemon) uint64 {
	var n uint64
	for _, c := range d.Loader.Chains() {
		n += c.Revisions
	}
	return n
}

func TestDriverTCChainOrder(t *testing.T) {
	requireVM(t)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	v := testenv.NewVeth(t)
	img := testenv.LayoutBytes(t, programs.TCXOrderObject(), "tcx_order.o", "v1")
	dir := testenv.ShortTempDir(t)
	ctx := context.Background()
	type vol struct {
		id          string
		order, prio int
	}
	vols := []vol{{"vol-c", 3, 300}, {"vol-a", 1, 100}, {"vol-b", 2, 200}}
	for _, vl := range vols {
		// tcx_order returns TCX_NEXT (-1, TC_ACT_UNSPEC): proceed on unspec.
		attrs := map[string]string{"image": img, "interface": v.Host, "type": "tc", "direction": "ingress",
			"priority": fmt.Sprint(vl.prio), "proceedOn": "unspec,pipe,dispatcher_return", "globals": fmt.Sprintf("order_id=%02x000000", vl.order)}
		if _, err := d.Node.NodePublishVolume(ctx, volReq(vl.id, filepath.Join(dir, vl.id), attrs)); err != nil {
			t.Fatalf("publish %s: %v", vl.id, err)
		}
	}
	v.Send(10, 64)
	seen := map[int]uint32{}
	for _, vl := range vols {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, vl.id, "order_map"), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		var val [16]byte
		if err := m.Lookup(uint32(0), &val); err != nil {
			t.Fatal(err)
		}
		m.Close()
		if hits := binary.NativeEndian.Uint64(val[0:8]); hits < 10 {
			t.Fatalf("%s saw %d packets", vl.id, hits)
		}
		seen[vl.order] = binary.NativeEndian.Uint32(val[8:12])
	}
	if seen[1] != 0 || seen[2] != 1 || seen[3] != 2 {
		t.Fatalf("marks seen 1,2,3 = %d,%d,%d; want 0,1,2", seen[1], seen[2], seen[3])
	}
	var targets []string
	for _, vl := range vols {
		if _, err := d.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vl.id, TargetPath: filepath.Join(dir, vl.id)}); err != nil {
			t.Fatal(err)
		}
		targets = append(targets, filepath.Join(dir, vl.id))
	}
	d.AssertClean(t, v, targets...)
}

// TestPublishKth measures, through the whole driver, how long publishing
// the k-th XDP program on one interface takes (k = 1..10): each publish
// builds a dispatcher revision with k members. Under TCG only the trend
// means anything. Runs with VMTEST_BENCH (make bench-vm).
func TestPublishKth(t *testing.T) {
	requireVM(t)
	if os.Getenv("VMTEST_BENCH") == "" {
		t.Skip("skipping: set VMTEST_BENCH=1 (make bench-vm) to measure publish latency per slot")
	}
	const rounds = 5
	d := testenv.StartDaemon(t, testenv.DaemonOptions{TmpfsState: true})
	v := testenv.NewVeth(t)
	img := testenv.LayoutBytes(t, xdpbpf.Object(), "xdp_counter.o", "v1")
	dir := testenv.ShortTempDir(t)
	ctx := context.Background()
	lat := make([][]time.Duration, 10)
	for r := 0; r < rounds; r++ {
		for k := 0; k < 10; k++ {
			vol := fmt.Sprintf("vol-%d-%d", r, k)
			s := time.Now()
			if _, err := d.Node.NodePublishVolume(ctx, volReq(vol, filepath.Join(dir, vol), map[string]string{"image": img, "interface": v.Host, "priority": fmt.Sprint(10 + k)})); err != nil {
				t.Fatal(err)
			}
			lat[k] = append(lat[k], time.Since(s))
		}
		for k := 0; k < 10; k++ {
			vol := fmt.Sprintf("vol-%d-%d", r, k)
			if _, err := d.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: filepath.Join(dir, vol)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nkernel %s: publish latency of the k-th XDP program on one interface, %d rounds, through gRPC\n\n", os.Getenv("VMEXEC_KERNEL"), rounds)
	fmt.Fprintf(&b, "| k | p50 | p99 |\n|---|---|---|\n")
	for k, l := range lat {
		slices.Sort(l)
		fmt.Fprintf(&b, "| %d | %.1f ms | %.1f ms |\n", k+1, float64(l[len(l)/2].Microseconds())/1000, float64(l[(len(l)-1)*99/100].Microseconds())/1000)
	}
	t.Log(b.String())
}
