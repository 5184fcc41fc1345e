package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// tcxAttrs gives the n-th distinct tcx request: priority sets the identity.
func tcxAttrs(img, ifname string, n int) map[string]string {
	return map[string]string{"image": img, "interface": ifname, "type": "tcx", "direction": "ingress",
		"priority": strconv.Itoa(10 + n), "globals": "order_id=01000000"}
}

// burstTarget is the i-th volume's target path. Each has a parent of its
// own, created beforehand, as kubelet gives every pod its own directory
// (500 concurrent mkdirs in one directory contend on its lock, which
// kubelet never asks of a driver).
func burstTarget(dir string, i int) string { return filepath.Join(dir, fmt.Sprint(i), "mount") }

// burst publishes n volumes at once over `distinct` requests and returns
// the wall time and each call's latency.
func burst(t *testing.T, client csi.NodeClient, img, ifname, dir string, n, distinct int) (time.Duration, []time.Duration) {
	t.Helper()
	for i := 0; i < n; i++ {
		if err := os.MkdirAll(filepath.Dir(burstTarget(dir, i)), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s := time.Now()
			_, errs[i] = client.NodePublishVolume(context.Background(), publishReq(fmt.Sprint("vol-", i), burstTarget(dir, i), tcxAttrs(img, ifname, i%distinct)))
			lat[i] = time.Since(s)
		}(i)
	}
	wg.Wait()
	wall := time.Since(start)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	return wall, lat
}

func unpublishAll(t *testing.T, client csi.NodeClient, dir string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := client.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: fmt.Sprint("vol-", i), TargetPath: burstTarget(dir, i)}); err != nil {
			t.Fatal(err)
		}
	}
}

// procStat returns a process's resident memory and CPU time.
func procStat(t *testing.T, pid int) (rssKiB int, cpu time.Duration) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			rssKiB, _ = strconv.Atoi(strings.Fields(l)[1])
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return rssKiB, time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ = 100
}

// restartPhases reads from a daemon's log (klog's text format) when the
// process pid logged its first line and when it logged "Restored state".
func restartPhases(log string, pid int) (first, restored time.Time, ok bool) {
	b, err := os.ReadFile(log)
	if err != nil {
		return first, restored, false
	}
	year := time.Now().Year()
	for _, l := range strings.Split(string(b), "\n") {
		// I1126 13:27:01.959870    2227 loader.go:125] "..."
		f := strings.Fields(l)
		if len(f) < 4 || len(f[0]) != 5 || f[2] != strconv.Itoa(pid) {
			continue
		}
		ts, err := time.ParseInLocation("2006 0102 15:04:05.000000", fmt.Sprintf("%d %s %s", year, f[0][1:], f[1]), time.Local)
		if err != nil {
			continue
		}
		if first.IsZero() {
			first = ts
		}
		if strings.Contains(l, `"Restored state"`) {
			return first, ts, true
		}
	}
	return first, restored, false
}

// restartRounds is how many times benchDaemon restarts the daemon.
const restartRounds = 7

func benchDaemon(t *testing.T, r *report) {
	const volumes = 500
	bin := releaseBinary(t)
	p := testenv.NewProcDaemon(t, bin)
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.TCXOrderObject, "v1")
	dir := testenv.ShortTempDir(t)
	p.Start(t)
	time.Sleep(500 * time.Millisecond) // let the runtime settle
	idle, cpu0 := procStat(t, p.Pid())
	burst(t, p.Node, img, v.Host, dir, volumes, burstPrograms[volumes])
	time.Sleep(500 * time.Millisecond)
	loaded, cpu1 := procStat(t, p.Pid())

	// Several restarts: one is a single sample of a machine whose load
	// varies.
	var restarts, toFirstLine, toRestored, toReady []time.Duration
	for i := 0; i < restartRounds; i++ {
		p.Terminate(t)
		start := time.Now()
		p.Start(t) // returns once Probe says ready: records re-adopted
		ready := time.Now()
		restarts = append(restarts, ready.Sub(start))
		if first, restored, ok := restartPhases(p.Log, p.Pid()); ok {
			toFirstLine = append(toFirstLine, first.Sub(start))
			toRestored = append(toRestored, restored.Sub(first))
			toReady = append(toReady, ready.Sub(restored))
		}
	}
	phases := "(the daemon's log did not show them)"
	if len(toFirstLine) > 0 {
		phases = fmt.Sprintf("exec to the daemon's first log line (process start, the client build exec'ing bpfmountd, package initialisation, the loader's freplace probe; the tracing probes wait for the first tracing volume) %s; from there to \"Restored state\" (500 records read from disk and re-adopted) %s; from there to the Probe that says ready (listen, serve, the test's connection) %s",
			ms(percentile(toFirstLine, 0.5)), ms(percentile(toRestored, 0.5)), ms(percentile(toReady, 0.5)))
	}
	time.Sleep(500 * time.Millisecond)
	restarted, _ := procStat(t, p.Pid())
	unpublishAll(t, p.Node, dir, volumes)
	testenv.AssertClean(t, p.StateDir, p.BPFFSRoot, v)
	r.add("Daemon", fmt.Sprintf(`
The daemon as a separate process (the release build, `+"`bpfmount serve`"+`),
%d tcx volumes over %d programs on one veth.

| figure | value | goal |
|---|---|---|
| RSS idle | %.1f MiB | |
| RSS with %d volumes (%d programs) | **%.1f MiB** | ≤ 60 MiB |
| RSS after a restart with %d volumes | %.1f MiB | |
| CPU time per publish (%d concurrent publishes) | %s | |
| restart to ready with %d volumes in state (exec to Probe ready), p50 of %d | **%s** | ≤ 200 ms |
| the same, slowest of the %d | %s | |

CPU time comes from /proc/PID/stat (10 ms ticks, so it is coarse). A
restart is SIGTERM, then exec until the first Probe that says ready; the
test polls the socket every millisecond (the daemon's socket appears only
once it listens).

Where a restart's time goes (p50 of each phase, from the
timestamps of the daemon's log): %s.

Reproduce: `+"`sudo make bench`"+` (TestBenchmarkReport/daemon).
`, volumes, burstPrograms[volumes], float64(idle)/1024, volumes, burstPrograms[volumes], float64(loaded)/1024,
		volumes, float64(restarted)/1024, volumes, ms((cpu1-cpu0)/volumes), volumes, restartRounds, ms(percentile(restarts, 0.5)),
		restartRounds, ms(percentile(restarts, 1)), phases))
}

func benchImages(t *testing.T, r *report) {
	reg := testenv.StartRegistry(t)
	obj, err := os.ReadFile(testenv.RepoPath(testenv.XDPCounterObject))
	if err != nil {
		t.Fatal(err)
	}
	img, err := bytecode.Build(obj, "xdp_counter.o", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/bpf/xdp-counter:v1"
	pusher := newRegistry(t)
	if _, err := pusher.Push(context.Background(), bytecode.Request{Reference: ref}, img); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const rounds = 20
	var cold, hit []time.Duration
	for i := 0; i < rounds; i++ {
		c := newRegistry(t)
		s := time.Now()
		if _, err := c.Fetch(ctx, bytecode.Request{Reference: ref}); err != nil {
			t.Fatal(err)
		}
		cold = append(cold, time.Since(s))
		s = time.Now()
		if _, err := c.Fetch(ctx, bytecode.Request{Reference: ref}); err != nil {
			t.Fatal(err)
		}
		hit = append(hit, time.Since(s))
	}
	c := newRegistry(t)
	reg.Gets()
	var wg sync.WaitGroup
	s := time.Now()
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Fetch(ctx, bytecode.Request{Reference: ref}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	concurrent := time.Since(s)
	m, b := reg.Gets()
	r.add("Images", fmt.Sprintf(`
The example image from a registry on 127.0.0.1 (go-containerregistry's, in
process), %d rounds each.

| figure | p50 | p99 |
|---|---|---|
| cold pull (empty cache: resolve, manifest, config, layer, verify, store) | %s | %s |
| cache hit (IfNotPresent) | %s | %s |
| 20 concurrent fetches of one uncached image, wall time | %s | (%d manifest GET, %d blob GETs in all) |

Reproduce: `+"`sudo make bench`"+` (TestBenchmarkReport/images).
`, rounds, ms(percentile(cold, .5)), ms(percentile(cold, .99)), ms(percentile(hit, .5)), ms(percentile(hit, .99)), ms(concurrent), m, b))
}

func newRegistry(t *testing.T) *bytecode.Registry {
	t.Helper()
	r, err := bytecode.NewRegistry(bytecode.RegistryOptions{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// rcuExpedited is the path of the kernel's switch that makes every RCU
// grace period an expedited one (IPIs to every CPU instead of waiting for
// each to pass a quiescent state): system-wide, an operator's choice.
const rcuExpedited = "/sys/kernel/rcu_expedited"

// withExpeditedRCU runs fn with rcu_expedited set to 1 and sets it back
// to what it was; it reports false, running nothing, where the switch is
// missing or cannot be written.
func withExpeditedRCU(t *testing.T, fn func()) bool {
	t.Helper()
	old, err := os.ReadFile(rcuExpedited)
	if err != nil {
		t.Logf("no %s: %v", rcuExpedited, err)
		return false
	}
	if err := os.WriteFile(rcuExpedited, []byte("1"), 0); err != nil {
		t.Logf("cannot write %s: %v", rcuExpedited, err)
		return false
	}
	defer func() {
		if err := os.WriteFile(rcuExpedited, old, 0); err != nil {
			t.Errorf("setting %s back to %q: %v", rcuExpedited, strings.TrimSpace(string(old)), err)
		}
	}()
	fn()
	return true
}

// rcuSetting is rcu_expedited's value now, for the report.
func rcuSetting() string {
	b, err := os.ReadFile(rcuExpedited)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// rawTCXBurst is the kernel's floor under a burst: distinct copies of the
// tcx test program loaded and attached to ifname's ingress at once, with
// cilium/ebpf and nothing else (no pins, mounts or state), each in a
// goroutine of its own. It returns the wall time and detaches them all.
func rawTCXBurst(t *testing.T, ifname string, distinct int) time.Duration {
	t.Helper()
	spec, err := ebpf.LoadCollectionSpec(testenv.RepoPath(testenv.TCXOrderObject))
	if err != nil {
		t.Fatal(err)
	}
	ifidx, err := netInterface(ifname)
	if err != nil {
		t.Fatal(err)
	}
	var prog string
	for name := range spec.Programs {
		prog = name
	}
	colls := make([]*ebpf.Collection, distinct)
	links := make([]link.Link, distinct)
	errs := make([]error, distinct)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range distinct {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if colls[i], errs[i] = ebpf.NewCollection(spec); errs[i] != nil {
				return
			}
			links[i], errs[i] = link.AttachTCX(link.TCXOptions{Interface: ifidx, Program: colls[i].Programs[prog], Attach: ebpf.AttachTCXIngress})
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	for i := range distinct {
		if links[i] != nil {
			links[i].Close()
		}
		if colls[i] != nil {
			colls[i].Close()
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return wall
}
