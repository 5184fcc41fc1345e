package bytecode

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/internal/fault"
)

type eventLog struct {
	mu sync.Mutex
	n  map[string]int
}

func (e *eventLog) observe(ev string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == nil {
		e.n = map[string]int{}
	}
	e.n[ev]++
}

func (e *eventLog) get(ev string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n[ev]
}

func TestFetchFromRegistry(t *testing.T) {
	ts := newTestServer(t)
	img := buildTest(t, "xdpcounter_bpfel.o")
	want := ts.push(t, "bpf/xdp-counter:v1", img)
	var ev eventLog
	r := newReg(t, RegistryOptions{Observe: ev.observe})

	got, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/xdp-counter:v1")})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != want {
		t.Errorf("digest %s, want %s", got.Digest, want)
	}
	if !bytes.Equal(got.Object, testObject(t)) {
		t.Error("object differs from the pushed one")
	}
	if !reflect.DeepEqual(got.Programs, map[string]string{"xdp_stats": "xdp"}) {
		t.Errorf("programs %v", got.Programs)
	}
	if !reflect.DeepEqual(got.Maps, map[string]string{"xdp_stats_map": "per_cpu_array"}) {
		t.Errorf("maps %v", got.Maps)
	}
	if got.Reference != ts.ref("bpf/xdp-counter:v1") || got.Signed {
		t.Errorf("reference %q signed %v", got.Reference, got.Signed)
	}

	// Again: from the cache, without a request; by digest too.
	ts.resetCounts()
	for _, ref := range []string{ts.ref("bpf/xdp-counter:v1"), ts.ref("bpf/xdp-counter@" + want)} {
		got, err = r.Fetch(ctxT(t), Request{Reference: ref})
		if err != nil || got.Digest != want {
			t.Fatalf("fetch %s: %v %v", ref, got, err)
		}
	}
	if n := ts.count("/v2/bpf/xdp-counter/manifests/v1"); n != 0 {
		t.Errorf("cached fetch asked the registry %d times", n)
	}
	if ev.get(EventPull) != 1 || ev.get(EventCacheHit) != 2 || ev.get(EventPullError) != 0 {
		t.Errorf("events %v", ev.n)
	}
}

func TestPullPolicies(t *testing.T) {
	ts := newTestServer(t)
	d1 := ts.push(t, "bpf/prog:v1", buildTest(t, "one.o"))
	dir := t.TempDir()
	r := newReg(t, RegistryOptions{CacheDir: dir})
	ref := ts.ref("bpf/prog:v1")
	fetch := func(p PullPolicy) (*Image, error) {
		return r.Fetch(ctxT(t), Request{Reference: ref, Policy: p})
	}
	if im, err := fetch(""); err != nil || im.Digest != d1 {
		t.Fatalf("first fetch: %v %v", im, err)
	}

	// The tag moves to a new image.
	d2 := ts.push(t, "bpf/prog:v1", buildTest(t, "two.o"))
	if d1 == d2 {
		t.Fatal("test images are identical")
	}
	if im, err := fetch(PullIfNotPresent); err != nil || im.Digest != d1 {
		t.Errorf("IfNotPresent: got %v %v, want the cached %s", im, err, d1)
	}
	if im, err := fetch(PullNever); err != nil || im.Digest != d1 {
		t.Errorf("Never: got %v %v, want the cached %s", im, err, d1)
	}
	if im, err := fetch(PullAlways); err != nil || im.Digest != d2 {
		t.Errorf("Always: got %v %v, want the new %s", im, err, d2)
	}
	if im, err := fetch(PullIfNotPresent); err != nil || im.Digest != d2 {
		t.Errorf("IfNotPresent after Always: got %v %v, want %s", im, err, d2)
	}

	// Always downloads only what is not cached: here, nothing but the
	// manifest.
	ts.resetCounts()
	if _, err := fetch(PullAlways); err != nil {
		t.Fatal(err)
	}
	if n := ts.count("/v2/bpf/prog/manifests/v1"); n != 1 {
		t.Errorf("Always made %d manifest GETs, want 1", n)
	}
	for p, n := range ts.gets {
		if n > 0 && bytes.Contains([]byte(p), []byte("/blobs/")) {
			t.Errorf("Always downloaded cached blob %s", p)
		}
	}

	// Never works without the registry, and after a restart.
	ts.close()
	if im, err := fetch(PullNever); err != nil || im.Digest != d2 {
		t.Errorf("Never, registry stopped: %v %v", im, err)
	}
	r.Close()
	r2 := newReg(t, RegistryOptions{CacheDir: dir})
	if im, err := r2.Fetch(ctxT(t), Request{Reference: ref, Policy: PullNever}); err != nil || im.Digest != d2 {
		t.Errorf("Never after restart: %v %v", im, err)
	}
	if im, err := r2.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/prog@" + d1), Policy: PullNever}); err != nil || im.Digest != d1 {
		t.Errorf("Never by digest after restart: %v %v", im, err)
	}
	_, err := r2.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/other:v1"), Policy: PullNever})
	wantKind(t, err, fault.Precondition, "bpf/other:v1", "Never")
	_, err = r2.Fetch(ctxT(t), Request{Reference: ref, Policy: "Sometimes"})
	wantKind(t, err, fault.Invalid, "Sometimes")
	_, err = r2.Fetch(ctxT(t), Request{Reference: "Not A Reference!"})
	wantKind(t, err, fault.Invalid)
}

func TestConcurrentFetchesPullOnce(t *testing.T) {
	ts := newTestServer(t)
	img := buildTest(t, "xdpcounter_bpfel.o")
	want := ts.push(t, "bpf/many:v1", img)
	m, _ := img.Manifest()
	ts.resetCounts()
	var ev eventLog
	r := newReg(t, RegistryOptions{Observe: ev.observe})

	// Hold the downloads until all 20 fetches have started.
	ts.hold()
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			im, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/many:v1")})
			if err == nil && im.Digest != want {
				err = errors.New("wrong digest " + im.Digest)
			}
			errs[i] = err
		}()
	}
	<-ts.arrived
	time.Sleep(100 * time.Millisecond)
	ts.release()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("fetch %d: %v", i, err)
		}
	}
	if n := ts.count("/v2/bpf/many/manifests/v1"); n != 1 {
		t.Errorf("%d manifest GETs, want 1", n)
	}
	for _, b := range append(m.Layers, m.Config) {
		if n := ts.count("/v2/bpf/many/blobs/" + b.Digest.String()); n != 1 {
			t.Errorf("%d GETs of blob %s, want 1", n, b.Digest)
		}
	}
	if ev.get(EventPull) != 1 {
		t.Errorf("%d pull events, want 1", ev.get(EventPull))
	}
}

func TestSharedPullOutlivesOneWaiter(t *testing.T) {
	ts := newTestServer(t)
	want := ts.push(t, "bpf/shared:v1", buildTest(t, "a.o"))
	r := newReg(t, RegistryOptions{})
	req := Request{Reference: ts.ref("bpf/shared:v1")}

	ts.hold()
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	errA := make(chan error, 1)
	go func() { _, err := r.Fetch(ctxA, req); errA <- err }()
	<-ts.arrived

	type result struct {
		im  *Image
		err error
	}
	resB := make(chan result, 1)
	go func() { im, err := r.Fetch(ctxT(t), req); resB <- result{im, err} }()
	waitFor(t, func() bool {
		r.flightMu.Lock()
		defer r.flightMu.Unlock()
		for _, f := range r.flights {
			if f.waiters == 2 {
				return true
			}
		}
		return false
	})

	cancelA()
	select {
	case err := <-errA:
		wantKind(t, err, fault.Canceled)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%v is not context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled fetch did not return")
	}
	select {
	case p := <-ts.aborted:
		t.Fatalf("the shared pull was aborted (%s) when one of two waiters left", p)
	case <-time.After(100 * time.Millisecond):
	}
	ts.release()
	res := <-resB
	if res.err != nil || res.im.Digest != want {
		t.Fatalf("remaining waiter: %v %v", res.im, res.err)
	}
}

func TestCancelAbortsPull(t *testing.T) {
	ts := newTestServer(t)
	ts.push(t, "bpf/slow:v1", buildTest(t, "a.o"))
	dir := t.TempDir()
	r := newReg(t, RegistryOptions{CacheDir: dir})

	ts.hold()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := r.Fetch(ctx, Request{Reference: ts.ref("bpf/slow:v1")}); errc <- err }()
	<-ts.arrived
	cancel()
	select {
	case err := <-errc:
		wantKind(t, err, fault.Canceled, "bpf/slow:v1")
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%v is not context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled fetch did not return")
	}
	select {
	case <-ts.aborted:
	case <-time.After(5 * time.Second):
		t.Fatal("the pull went on after its only waiter left")
	}
	if files := blobFiles(t, dir); len(files) != 0 {
		t.Errorf("an abandoned pull left %v", files)
	}

	// Already cancelled: no request at all.
	_, err := r.Fetch(ctx, Request{Reference: ts.ref("bpf/slow:v1")})
	wantKind(t, err, fault.Canceled)
}

func TestPullTimeout(t *testing.T) {
	ts := newTestServer(t)
	ts.push(t, "bpf/slow:v1", buildTest(t, "a.o"))
	r := newReg(t, RegistryOptions{PullTimeout: 300 * time.Millisecond})
	ts.hold()
	start := time.Now()
	_, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/slow:v1")})
	wantKind(t, err, fault.Unavailable, "bpf/slow:v1", "timed out")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timeout took %v", d)
	}
}

func TestCorruptBlobIsRejected(t *testing.T) {
	ts := newTestServer(t)
	img := buildTest(t, "a.o")
	ts.push(t, "bpf/bad:v1", img)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	dir := t.TempDir()
	var ev eventLog
	r := newReg(t, RegistryOptions{CacheDir: dir, Observe: ev.observe})

	ts.setCorrupt(ld.String())
	_, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/bad:v1")})
	wantKind(t, err, fault.Invalid, "bpf/bad:v1", "digest")
	if files := blobFiles(t, dir); len(files) != 0 {
		t.Errorf("a rejected image left blobs in the cache: %v", files)
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Errorf("a rejected image left temp files: %v", tmp)
	}
	if len(r.cache.idx.Images) != 0 || len(r.cache.idx.Refs) != 0 {
		t.Errorf("a rejected image is in the index: %+v", r.cache.idx)
	}
	_, err = r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/bad:v1"), Policy: PullNever})
	wantKind(t, err, fault.Precondition)
	if ev.get(EventPullError) != 1 {
		t.Errorf("events %v", ev.n)
	}

	ts.setCorrupt("")
	if _, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/bad:v1")}); err != nil {
		t.Fatalf("after the registry was fixed: %v", err)
	}
}

func TestCrashLeftovers(t *testing.T) {
	ts := newTestServer(t)
	img := buildTest(t, "a.o")
	want := ts.push(t, "bpf/crash:v1", img)
	dir := t.TempDir()

	// A download a crash interrupted: a half-written temp file.
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	half := filepath.Join(dir, "tmp", "blob-1234")
	if err := os.WriteFile(half, []byte("\x1f\x8b half a layer"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := newReg(t, RegistryOptions{CacheDir: dir})
	if _, err := os.Stat(half); !os.IsNotExist(err) {
		t.Errorf("the temp file survived the start: %v", err)
	}
	im, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/crash:v1")})
	if err != nil || im.Digest != want {
		t.Fatalf("fetch: %v %v", im, err)
	}
	r.Close()

	// A cached blob damaged behind our back (same size, other bytes) is
	// caught on read: Never refuses, IfNotPresent pulls it again.
	lp := filepath.Join(dir, "blobs", "sha256", ld.Hex)
	b, err := os.ReadFile(lp)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(lp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r2 := newReg(t, RegistryOptions{CacheDir: dir})
	_, err = r2.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/crash:v1"), Policy: PullNever})
	wantKind(t, err, fault.Precondition)
	ts.resetCounts()
	im, err = r2.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/crash:v1")})
	if err != nil || im.Digest != want {
		t.Fatalf("refetch: %v %v", im, err)
	}
	if n := ts.count("/v2/bpf/crash/blobs/" + ld.String()); n != 1 {
		t.Errorf("damaged layer fetched %d times, want 1", n)
	}

	// A truncated blob (missing size) drops the entry at start.
	r2.Close()
	if err := os.WriteFile(lp, b[:10], 0o600); err != nil {
		t.Fatal(err)
	}
	r3 := newReg(t, RegistryOptions{CacheDir: dir})
	_, err = r3.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/crash:v1"), Policy: PullNever})
	wantKind(t, err, fault.Precondition)
	if _, err := os.Stat(lp); !os.IsNotExist(err) {
		t.Errorf("truncated blob still there: %v", err)
	}
}

func TestCacheIsExclusive(t *testing.T) {
	dir := t.TempDir()
	newReg(t, RegistryOptions{CacheDir: dir})
	if _, err := NewRegistry(RegistryOptions{CacheDir: dir}); err == nil {
		t.Fatal("two registries opened one cache")
	}
}

func TestUnreachableRegistry(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var ev eventLog
	r := newReg(t, RegistryOptions{Observe: ev.observe})
	_, err = r.Fetch(ctxT(t), Request{Reference: addr + "/bpf/x:v1"})
	wantKind(t, err, fault.Unavailable, addr+"/bpf/x:v1")
	if ev.get(EventPullError) != 1 {
		t.Errorf("events %v", ev.n)
	}
}

func TestPlainHTTPRefused(t *testing.T) {
	ts := newTestServer(t)
	ts.push(t, "bpf/x:v1", buildTest(t, "a.o"))
	r := newReg(t, RegistryOptions{Insecure: func(string) bool { return false }})
	_, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/x:v1")})
	wantKind(t, err, fault.Unavailable)

	d := newReg(t, RegistryOptions{})
	for host, want := range map[string]bool{
		"127.0.0.1:5000": true, "localhost": true, "localhost:5000": true, "[::1]:5000": true,
		"10.0.0.1:5000": false, "192.168.1.1": false, "registry.example": false, "registry.local": false,
	} {
		if got := d.allowHTTP(host); got != want {
			t.Errorf("allowHTTP(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestNotABytecodeImage(t *testing.T) {
	ts := newTestServer(t)
	dir := t.TempDir()
	r := newReg(t, RegistryOptions{CacheDir: dir})

	// Labels name a program the object lacks: FromImage's check.
	img, err := Build(testObject(t), "x.o", map[string]string{"xdp_stats": "xdp"}, map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.Config.Labels[LabelPrograms] = `{"no_such_prog":"xdp"}`
	img = mutateConfig(t, img, cfg)
	ts.push(t, "bpf/lying:v1", img)
	_, err = r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/lying:v1")})
	wantKind(t, err, fault.Invalid, "no_such_prog")

	// Two layers: refused before downloading them.
	two := appendLayer(t, buildTest(t, "a.o"), tarOf(t, map[string][]byte{"extra": []byte("x")}))
	ts.push(t, "bpf/two:v1", two)
	ts.resetCounts()
	_, err = r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/two:v1")})
	wantKind(t, err, fault.Invalid, "2 layers")
	for p, n := range ts.gets {
		if n > 0 && bytes.Contains([]byte(p), []byte("/blobs/")) {
			t.Errorf("downloaded %s of a two-layer image", p)
		}
	}
	if files := blobFiles(t, dir); len(files) != 0 {
		t.Errorf("rejected images left %v", files)
	}

	_, err = r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/absent:v1")})
	wantKind(t, err, fault.NotFound, "bpf/absent:v1")
	ts.push(t, "bpf/present:v1", buildTest(t, "a.o"))
	_, err = r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/present:v2")})
	wantKind(t, err, fault.NotFound, "bpf/present:v2")
}

func TestEvictionLRU(t *testing.T) {
	ts := newTestServer(t)
	dir := t.TempDir()
	inUse := map[string]bool{}
	var mu sync.Mutex
	var ev eventLog
	r := newReg(t, RegistryOptions{CacheDir: dir, Observe: ev.observe, InUse: func() map[string]bool {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(inUse)
	}})
	clock := time.Unix(1_000_000, 0)
	r.now = func() time.Time { clock = clock.Add(time.Second); return clock }

	digests := map[string]string{}
	for _, n := range []string{"a", "b", "c"} {
		digests[n] = ts.push(t, "bpf/"+n+":v1", buildTest(t, n+".o"))
		if _, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/" + n + ":v1")}); err != nil {
			t.Fatal(err)
		}
	}
	// a is used again: b is now the least recently used.
	if _, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/a:v1")}); err != nil {
		t.Fatal(err)
	}
	size := func(n string) int64 { return r.cache.idx.Images[digests[n]].size(digests[n]) }
	mu.Lock()
	inUse[digests["c"]] = true
	mu.Unlock()

	// Room for two: b goes (c is older than a but in use).
	r.opts.MaxCacheBytes = size("a") + size("c")
	if got := r.Prune(); !reflect.DeepEqual(got, []string{digests["b"]}) {
		t.Fatalf("evicted %v, want b %s", got, digests["b"])
	}
	for n, ok := range map[string]bool{"a": true, "b": false, "c": true} {
		_, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/" + n + ":v1"), Policy: PullNever})
		if ok && err != nil {
			t.Errorf("%s evicted: %v", n, err)
		}
		if !ok {
			wantKind(t, err, fault.Precondition)
		}
	}
	if files := blobFiles(t, dir); len(files) != 6 {
		t.Errorf("%d blobs left, want 6 (3 each for a and c): %v", len(files), files)
	}

	// Room for nothing: everything not in use goes.
	r.opts.MaxCacheBytes = 1
	r.Prune()
	if _, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/c:v1"), Policy: PullNever}); err != nil {
		t.Errorf("in-use image evicted: %v", err)
	}
	_, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/a:v1"), Policy: PullNever})
	wantKind(t, err, fault.Precondition)
	if ev.get(EventEvict) != 2 {
		t.Errorf("events %v", ev.n)
	}
}

func TestEvictionInBackground(t *testing.T) {
	ts := newTestServer(t)
	dir := t.TempDir()
	a := ts.push(t, "bpf/a:v1", buildTest(t, "a.o"))
	b := ts.push(t, "bpf/b:v1", buildTest(t, "b.o"))
	r, err := NewRegistry(RegistryOptions{CacheDir: dir, MaxCacheBytes: 1, InUse: func() map[string]bool { return map[string]bool{b: true} }})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/" + n + ":v1")}); err != nil {
			t.Fatal(err)
		}
	}
	r.Close() // waits for the evictions the pulls started
	r2 := newReg(t, RegistryOptions{CacheDir: dir})
	if _, err := r2.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/b:v1"), Policy: PullNever}); err != nil {
		t.Errorf("in-use image evicted: %v", err)
	}
	_, err = r2.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/a@" + a), Policy: PullNever})
	wantKind(t, err, fault.Precondition)
}

func TestLayoutThroughRegistry(t *testing.T) {
	dir := t.TempDir()
	if err := WriteLayout(dir, "v1", buildTest(t, "a.o")); err != nil {
		t.Fatal(err)
	}
	r := newReg(t, RegistryOptions{})
	im, err := r.Fetch(ctxT(t), Request{Reference: "oci:" + dir + ":v1"})
	if err != nil || im.Programs["xdp_stats"] != "xdp" {
		t.Fatalf("%v %v", im, err)
	}
	_, pub, _ := genKey(t)
	v, err := NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.FetchWith(ctxT(t), Request{Reference: "oci:" + dir + ":v1"}, FetchOptions{RequireSignature: true, Verifier: v})
	wantKind(t, err, fault.PermissionDenied, "signature")
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A fetch that arrives while an abandoned pull is winding down starts its
// own pull instead of inheriting the cancellation.
func TestNewcomerAfterAbandonedPull(t *testing.T) {
	ts := newTestServer(t)
	want := ts.push(t, "bpf/late:v1", buildTest(t, "a.o"))
	r := newReg(t, RegistryOptions{})
	req := Request{Reference: ts.ref("bpf/late:v1")}
	for i := 0; i < 20; i++ {
		r.cache.mu.Lock()
		r.cache.dropLocked(want)
		r.cache.mu.Unlock()
		ts.hold()
		ctxA, cancelA := context.WithCancel(context.Background())
		errA := make(chan error, 1)
		go func() { _, err := r.Fetch(ctxA, req); errA <- err }()
		<-ts.arrived
		cancelA()
		type result struct {
			im  *Image
			err error
		}
		resB := make(chan result, 1)
		go func() { im, err := r.Fetch(ctxT(t), req); resB <- result{im, err} }()
		wantKind(t, <-errA, fault.Canceled)
		// B either joined A's pull before A left (then it lives on) or
		// started its own; either way it must not see A's cancellation.
		select {
		case res := <-resB:
			t.Fatalf("round %d: newcomer returned while the registry was held: %v %v", i, res.im, res.err)
		case <-time.After(20 * time.Millisecond):
		}
		ts.release()
		if res := <-resB; res.err != nil || res.im.Digest != want {
			t.Fatalf("round %d: newcomer: %v %v", i, res.im, res.err)
		}
		for len(ts.aborted) > 0 {
			<-ts.aborted
		}
		for len(ts.arrived) > 0 {
			<-ts.arrived
		}
	}
}
