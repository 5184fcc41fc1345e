package integration

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/events"
	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/mapfs"
	"github.com/bpfmount/bpfmount/internal/testenv"
)

// eventLog is a Recorder keeping what it is told.
type eventLog struct {
	mu  sync.Mutex
	got []string
}

func (l *eventLog) Warning(p events.Pod, reason, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, p.Namespace+"/"+p.Name+" "+reason+" "+msg)
}
func (l *eventLog) Normal(events.Pod, string, string) {}

func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.got, "\n")
}

func newMetricsServer(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(metrics.Handler())
	t.Cleanup(srv.Close)
	return srv
}

// detached waits for the kernel to release an unpinned link (it does so
// from a work queue) and returns the XDP program still attached, or 0.
func detached(t *testing.T, ifname string) uint32 {
	t.Helper()
	for i := 0; i < 100; i++ {
		if id := testenv.XDPProgram(t, ifname); id == 0 {
			return 0
		}
		time.Sleep(20 * time.Millisecond)
	}
	return testenv.XDPProgram(t, ifname)
}

func record(t *testing.T, d *testenv.Daemon, vol string) *state.Record {
	t.Helper()
	rec, err := stateStore(t, d).Get(vol)
	if err != nil || rec == nil {
		t.Fatalf("record of %s: %v, %v", vol, rec, err)
	}
	return rec
}

// TestBrokenVolumeDoesNotStopNode: one recorded volume's pins are damaged
// while the daemon is down. The daemon still starts and serves, counts and
// reports the broken volume on its pod, the other volume keeps working and
// new publishes work, and the broken volume unpublishes cleanly.
func TestBrokenVolumeDoesNotStopNode(t *testing.T) {
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	good, bad := testenv.NewVeth(t), testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	dir := testenv.ShortTempDir(t)
	goodTarget, badTarget := filepath.Join(dir, "good"), filepath.Join(dir, "bad")
	ctx := context.Background()
	for _, p := range []struct {
		vol, target string
		v           *testenv.Veth
	}{{"vol-good", goodTarget, good}, {"vol-bad", badTarget, bad}} {
		if _, err := d.Node.NodePublishVolume(ctx, publishReq(p.vol, p.target, xdpAttrs(img, p.v.Host), true)); err != nil {
			t.Fatal(err)
		}
	}
	// The pod is known to the record (as for a kubelet request).
	rec := record(t, d, "vol-bad")
	rec.Pod = state.Pod{Namespace: "team", Name: "reader", UID: "uid-1"}
	if err := stateStore(t, d).Put(rec); err != nil {
		t.Fatal(err)
	}

	d.Stop()
	// Damage: the program pin becomes a map pin.
	progPin := filepath.Join(d.BPFFSRoot, "programs", rec.Key, "program")
	if err := os.Remove(progPin); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(progPin); err != nil {
		t.Fatal(err)
	}
	m.Close()

	log := &eventLog{}
	srv := newMetricsServer(t)
	errsBefore := scrape(t, srv, "bpfmount_restore_errors_total")
	d.Restart(testenv.DaemonOptions{Configure: func(o *driver.Options) { o.Events = log }}) // fails the test if Restore fails
	if got := scrape(t, srv, "bpfmount_restore_errors_total"); got != errsBefore+1 {
		t.Errorf("restore errors went from %v to %v, want +1", errsBefore, got)
	}
	if ev := log.String(); !strings.Contains(ev, "team/reader "+events.ReasonFailed) || !strings.Contains(ev, "vol-bad") {
		t.Errorf("no event on the broken volume's pod; events:\n%s", ev)
	}
	if r := record(t, d, "vol-bad"); r.Broken == "" || r.ProgramID != 0 {
		t.Errorf("the damaged volume's record is not marked broken: %+v", r)
	}
	if r := record(t, d, "vol-good"); r.Broken != "" {
		t.Errorf("the good volume is marked broken: %q", r.Broken)
	}

	// The good volume still works; a new publish works.
	if err := good.Send(3, 64); err != nil {
		t.Fatal(err)
	}
	if p, _ := counts(t, testenv.Consumer{}, filepath.Join(goodTarget, "xdp_stats_map")); p < 3 {
		t.Fatalf("the good volume counted %d packets", p)
	}
	newTarget := filepath.Join(dir, "new")
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-new", newTarget, xdpAttrs(img, good.Host), true)); err != nil {
		t.Fatalf("publish after a broken restore: %v", err)
	}

	// The broken volume unpublishes cleanly: mounts, pins, program, record.
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-bad", badTarget)); err != nil {
		t.Fatalf("unpublish of the broken volume: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d.BPFFSRoot, "programs", rec.Key)); !os.IsNotExist(err) {
		t.Errorf("the broken volume's pins are left: %v", err)
	}
	if id := detached(t, bad.Host); id != 0 {
		t.Errorf("the broken volume's program %d is still attached", id)
	}
	for _, r := range [][2]string{{"vol-good", goodTarget}, {"vol-new", newTarget}} {
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(r[0], r[1])); err != nil {
			t.Fatal(err)
		}
	}
	d.AssertClean(t, good, goodTarget, badTarget, newTarget)
}

// TestAfterRebootNothingIsCounted simulates a reboot under a kept state
// directory: the records are there, the mounts and pins are gone. The
// gauges and the records count no program, and the next publish of the
// volume loads it afresh.
func TestAfterRebootNothingIsCounted(t *testing.T) {
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	target := filepath.Join(testenv.ShortTempDir(t), "vol")
	ctx := context.Background()
	req := publishReq("vol-reboot", target, xdpAttrs(img, v.Host), true)
	if _, err := d.Node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	rec := record(t, d, "vol-reboot")

	d.Stop()
	// The reboot: every mount and pin goes, the program with them.
	for _, m := range []string{target, rec.StagingPath} {
		if err := mapfs.Withdraw("", m, mapfs.Made{Dev: rec.Mount.Dev}); err != nil {
			t.Fatal(err)
		}
	}
	if err := mapfs.Withdraw(rec.StagingPath, "", mapfs.Made{}); err != nil {
		t.Fatal(err)
	}
	// Every pin of the driver goes (its programs', and the dispatchers'
	// where the kernel chains): bpffs does not survive a reboot.
	ents, err := os.ReadDir(d.BPFFSRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(d.BPFFSRoot, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	if id := detached(t, v.Host); id != 0 {
		t.Fatalf("simulated reboot left program %d attached", id)
	}

	d.Restart(testenv.DaemonOptions{})
	srv := newMetricsServer(t)
	if got := scrape(t, srv, "bpfmount_volumes"); got != 0 {
		t.Errorf("bpfmount_volumes = %v after the reboot, want 0", got)
	}
	if got := scrape(t, srv, "bpfmount_programs_loaded"); got != 0 {
		t.Errorf("bpfmount_programs_loaded = %v after the reboot, want 0", got)
	}
	if r := record(t, d, "vol-reboot"); r.ProgramID != 0 || r.Broken == "" {
		t.Errorf("the record still describes a program: %+v", r)
	}

	if _, err := d.Node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("publish after the reboot: %v", err)
	}
	if testenv.XDPProgram(t, v.Host) == 0 {
		t.Fatal("publish after the reboot attached nothing")
	}
	if r := record(t, d, "vol-reboot"); r.ProgramID == 0 || r.Broken != "" {
		t.Errorf("the new record: %+v", r)
	}
	if got := scrape(t, srv, "bpfmount_volumes"); got != 1 {
		t.Errorf("bpfmount_volumes = %v, want 1", got)
	}
	counts(t, testenv.Consumer{}, filepath.Join(target, "xdp_stats_map"))
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-reboot", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, target)
}

// TestUnreadableRecordKeepsItsMounts: a volume's record cannot be decoded
// and an intent of an interrupted publish names it. Restore must not take
// the missing record for "never published" and withdraw the volume's
// mounts: it keeps record, intent, mounts and pins, and counts it.
func TestUnreadableRecordKeepsItsMounts(t *testing.T) {
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	target := filepath.Join(testenv.ShortTempDir(t), "vol")
	ctx := context.Background()
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-garbled", target, xdpAttrs(img, v.Host), true)); err != nil {
		t.Fatal(err)
	}
	rec := record(t, d, "vol-garbled")
	d.Stop()
	recFile := filepath.Join(d.StateDir, "volumes", "vol-garbled.json")
	good, err := os.ReadFile(recFile)
	if err != nil {
		t.Fatal(err)
	}
	// Cut in the middle, as a damaged disk or a hand edit would leave it.
	if err := os.WriteFile(recFile, good[:len(good)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := stateStore(t, d).PutIntent(&state.Intent{Op: state.OpPublish, VolumeID: "vol-garbled", TargetPath: target, StagingPath: rec.StagingPath, Key: rec.Key, CreateTarget: true}); err != nil {
		t.Fatal(err)
	}

	srv := newMetricsServer(t)
	errsBefore := scrape(t, srv, "bpfmount_restore_errors_total")
	d.Restart(testenv.DaemonOptions{})
	if got := scrape(t, srv, "bpfmount_restore_errors_total"); got < errsBefore+1 {
		t.Errorf("restore errors went from %v to %v, want it counted", errsBefore, got)
	}
	if m, _ := mapfs.Inspect(target); !m.Mounted {
		t.Fatal("the volume's target was unmounted although it has a record")
	}
	if m, _ := mapfs.Inspect(rec.StagingPath); !m.Mounted {
		t.Fatal("the volume's staging mount was removed")
	}
	if _, err := os.Stat(filepath.Join(d.StateDir, "intents", "vol-garbled.json")); err != nil {
		t.Errorf("the intent was not kept: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d.BPFFSRoot, "programs", rec.Key, "program")); err != nil {
		t.Errorf("the volume's pins were removed: %v", err)
	}
	counts(t, testenv.Consumer{}, filepath.Join(target, "xdp_stats_map"))

	// An operator repairs the record; then everything unpublishes.
	if err := os.WriteFile(recFile, good, 0o600); err != nil {
		t.Fatal(err)
	}
	d.Restart(testenv.DaemonOptions{})
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-garbled", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, target)
}

// stateStore opens the daemon's state directory, to damage records as a
// crash or a reboot would.
func stateStore(t *testing.T, d *testenv.Daemon) *state.Store {
	t.Helper()
	st, err := state.Open(d.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
