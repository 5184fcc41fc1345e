package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// pushExample builds the XDP counter image as `bpfmount image build` does
// and pushes it to the registry.
func pushExample(t *testing.T, client *bytecode.Registry, ref string) string {
	t.Helper()
	obj, err := os.ReadFile(testenv.RepoPath(testenv.XDPCounterObject))
	if err != nil {
		t.Fatal(err)
	}
	img, err := bytecode.Build(obj, "xdp_counter.o", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	digest, err := client.Push(context.Background(), bytecode.Request{Reference: ref}, img)
	if err != nil {
		t.Fatal(err)
	}
	return digest
}

func newRegistryClient(t *testing.T, opts bytecode.RegistryOptions) *bytecode.Registry {
	t.Helper()
	opts.CacheDir = filepath.Join(t.TempDir(), "cache")
	r, err := bytecode.NewRegistry(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestRegistryImagesLoadOnceAndCount(t *testing.T) {
	reg := testenv.StartRegistry(t)
	ref := reg.Host + "/bpf/xdp-counter:v1"
	digest := pushExample(t, newRegistryClient(t, bytecode.RegistryOptions{}), ref)
	reg.Gets()

	fetcher := newRegistryClient(t, bytecode.RegistryOptions{})
	d, v, _, dir := setup(t, "", testenv.DaemonOptions{Fetcher: fetcher})
	ctx := context.Background()

	// 20 pods ask for the same uncached image at once.
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, errs[i] = d.Node.NodePublishVolume(ctx, publishReq(fmt.Sprintf("vol-%d", i), filepath.Join(dir, fmt.Sprint(i)), xdpAttrs(ref, v.Host), true))
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if m, b := reg.Gets(); m != 1 || b != 2 {
		t.Fatalf("20 concurrent publishes made %d manifest and %d blob GETs; want 1 and 2 (config, layer)", m, b)
	}
	rec, _ := d.Record("vol-0")
	if rec.Identity.Digest != digest {
		t.Fatalf("record digest %s, pushed %s", rec.Identity.Digest, digest)
	}
	if len(d.Loader.Programs()) != 1 {
		t.Fatalf("20 identical requests loaded %d programs", len(d.Loader.Programs()))
	}
	before, _ := counts(t, testenv.Consumer{}, filepath.Join(dir, "7", "xdp_stats_map"))
	v.Send(30, 64)
	if after, _ := counts(t, testenv.Consumer{}, filepath.Join(dir, "7", "xdp_stats_map")); after < before+30 {
		t.Fatalf("counter %d -> %d", before, after)
	}

	// With the registry gone, Never and IfNotPresent still work from the cache.
	reg.Stop()
	never := xdpAttrs(ref, v.Host)
	never["pullPolicy"] = "Never"
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-never", filepath.Join(dir, "never"), never, true)); err != nil {
		t.Fatalf("pullPolicy Never from cache: %v", err)
	}
	always := xdpAttrs(ref, v.Host)
	always["pullPolicy"] = "Always"
	expectCode(t, d, publishReq("vol-always", filepath.Join(dir, "always"), always, true), codes.Unavailable, ref)
	missing := xdpAttrs(reg.Host+"/bpf/other:v1", v.Host)
	missing["pullPolicy"] = "Never"
	expectCode(t, d, publishReq("vol-missing", filepath.Join(dir, "missing"), missing, true), codes.FailedPrecondition, "Never")

	targets := []string{filepath.Join(dir, "never"), filepath.Join(dir, "always"), filepath.Join(dir, "missing")}
	for i := 0; i < n; i++ {
		if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(fmt.Sprintf("vol-%d", i), filepath.Join(dir, fmt.Sprint(i)))); err != nil {
			t.Fatal(err)
		}
		targets = append(targets, filepath.Join(dir, fmt.Sprint(i)))
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-never", filepath.Join(dir, "never"))); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, targets...)
}

func TestPolicyRequiresSignedImages(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	privDER, _ := x509.MarshalPKCS8PrivateKey(key)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	privPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER})
	verifier, err := bytecode.NewVerifier(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := bytecode.NewSigner(privPEM, nil)
	if err != nil {
		t.Fatal(err)
	}

	reg := testenv.StartRegistry(t)
	client := newRegistryClient(t, bytecode.RegistryOptions{})
	signed, unsigned := reg.Host+"/bpf/signed:v1", reg.Host+"/bpf/unsigned:v1"
	pushExample(t, client, signed)
	pushExample(t, client, unsigned)
	if _, err := client.Sign(context.Background(), bytecode.Request{Reference: signed}, signer); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse([]byte(`apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
local:
  requireSignature: true
`))
	if err != nil {
		t.Fatal(err)
	}
	fetcher := newRegistryClient(t, bytecode.RegistryOptions{Verifier: verifier})
	d, v, _, dir := setup(t, "", testenv.DaemonOptions{Fetcher: fetcher, Configure: func(o *driver.Options) { o.Policy = policy.Static(pol) }})
	ctx := context.Background()

	expectCode(t, d, publishReq("vol-unsigned", filepath.Join(dir, "u"), xdpAttrs(unsigned, v.Host), true), codes.PermissionDenied, "not signed")
	d.AssertClean(t, v, filepath.Join(dir, "u"))
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-signed", filepath.Join(dir, "s"), xdpAttrs(signed, v.Host), true)); err != nil {
		t.Fatalf("signed image: %v", err)
	}
	if rec, _ := d.Record("vol-signed"); !rec.Signed {
		t.Fatal("the record does not say the image was verified")
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-signed", filepath.Join(dir, "s"))); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, filepath.Join(dir, "s"))
}

// A pod the policy denies makes the node contact no registry, also when
// the volume names no type (the hook is known only from the image).
func TestDeniedPodNeverReachesRegistry(t *testing.T) {
	reg := testenv.StartRegistry(t)
	ref := reg.Host + "/bpf/xdp-counter:v1"
	pushExample(t, newRegistryClient(t, bytecode.RegistryOptions{}), ref)
	pol, err := policy.Parse([]byte(`apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: web
  namespaces: ["web"]
  images: ["` + reg.Host + `/bpf/*"]
  hooks: ["tcx"]
  interfaces: ["eth*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	fetcher := newRegistryClient(t, bytecode.RegistryOptions{})
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Fetcher: fetcher, Configure: func(o *driver.Options) { o.Policy = policy.Static(pol) }})
	v := testenv.NewVeth(t)
	target := filepath.Join(testenv.ShortTempDir(t), "vol")
	reg.Requests()

	for _, c := range []struct {
		name     string
		ns       string
		fragment string
	}{
		{"namespace no rule names", "attacker", "no rule matches"},
		{"interface the rule does not allow", "web", "allows interfaces"},
	} {
		expectCode(t, d, publishReq("vol-denied", target, podAttrs(ref, v.Host, c.ns), true), codes.PermissionDenied, c.fragment)
		if n := reg.Requests(); n != 0 {
			t.Fatalf("%s: a denied pod made %d requests to the registry", c.name, n)
		}
	}
	d.AssertClean(t, v, target)
}
