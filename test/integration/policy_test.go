package integration

import (
	"bytes"
	"context"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/events/kube"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/internal/testenv"
)

func podAttrs(image, ifname, namespace string) map[string]string {
	return map[string]string{
		"image": image, "interface": ifname,
		"csi.storage.k8s.io/pod.name":            "reader",
		"csi.storage.k8s.io/pod.namespace":       namespace,
		"csi.storage.k8s.io/pod.uid":             "0b4e6f2a-1111-2222-3333-444455556666",
		"csi.storage.k8s.io/serviceAccount.name": "default",
		"csi.storage.k8s.io/ephemeral":           "true",
	}
}

func TestPodsAreDeniedWithoutPolicy(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	target := filepath.Join(dir, "vol")
	expectCode(t, d, publishReq("vol-pod", target, podAttrs(img, v.Host, "web"), true), codes.PermissionDenied, "no policy is configured")
	d.AssertClean(t, v, target)
}

func TestPolicyRulesDecide(t *testing.T) {
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	layoutDir := strings.TrimSuffix(strings.TrimPrefix(img, "oci:"), ":v1")
	pol, err := policy.Parse([]byte(`apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: monitoring
  namespaces: ["net-observability"]
  images: ["oci:` + filepath.Dir(layoutDir) + `/*"]
  interfaces: ["bpfm*"]
  readOnlyOnly: true
`))
	if err != nil {
		t.Fatal(err)
	}
	d, v, _, dir := setup(t, "", testenv.DaemonOptions{Configure: func(o *driver.Options) { o.Policy = policy.Static(pol) }})
	target := filepath.Join(dir, "vol")
	ctx := context.Background()

	expectCode(t, d, publishReq("vol-web", target, podAttrs(img, v.Host, "web"), true), codes.PermissionDenied, `closest rule "monitoring": namespace not allowed`)
	expectCode(t, d, publishReq("vol-rw", target, podAttrs(img, v.Host, "net-observability"), false), codes.PermissionDenied, "read-only")
	d.AssertClean(t, v, target)

	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-ok", target, podAttrs(img, v.Host, "net-observability"), true)); err != nil {
		t.Fatalf("allowed pod: %v", err)
	}
	rec, _ := d.Record("vol-ok")
	if rec.Pod.Namespace != "net-observability" || rec.Pod.Name != "reader" {
		t.Fatalf("record lacks the pod: %+v", rec.Pod)
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-ok", target)); err != nil {
		t.Fatal(err)
	}
	d.AssertClean(t, v, target)
}

// syncBuffer collects klog output from concurrent goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestSecretsNeverLogged(t *testing.T) {
	var logs syncBuffer
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.Set("logtostderr", "false")
	fs.Set("v", "5")
	klog.SetOutput(&logs)
	t.Cleanup(func() {
		klog.Flush()
		fs.Set("logtostderr", "true")
		fs.Set("v", "0")
	})

	// The tokens come only with a pod's request, which the policy must allow.
	pol, err := policy.Parse([]byte("apiVersion: bpfmount.io/v1alpha1\nkind: NodePolicy\nrules:\n- name: web\n  namespaces: [web]\n  images: [\"oci:/**\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{Configure: func(o *driver.Options) { o.Policy = policy.Static(pol) }})
	target := filepath.Join(dir, "vol")
	const secret = "c2VjcmV0LXVzZXI6aHVudGVyMi1kby1ub3QtbG9n" // base64 user:password
	const token = "eyJhbGciOiJSUzI1NiJ9.token-do-not-log"
	req := publishReq("vol-secret", target, podAttrs(img, v.Host, "web"), false)
	req.Secrets = map[string]string{".dockerconfigjson": `{"auths":{"registry.example":{"auth":"` + secret + `"}}}`}
	req.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"] = `{"":{"token":"` + token + `"}}`
	if _, err := d.Node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	// Nothing on disk holds them either (the record is there now).
	files := append(testenv.Files(t, filepath.Join(d.StateDir, "volumes")), testenv.Files(t, filepath.Join(d.StateDir, "intents"))...)
	if len(files) == 0 {
		t.Fatal("no state files to check")
	}
	for _, f := range files {
		if b := readFile(t, f); strings.Contains(b, secret) || strings.Contains(b, token) {
			t.Fatalf("%s holds a secret", f)
		}
	}
	// A failing call logs too.
	bad := publishReq("vol-secret2", target+"2", map[string]string{"image": img, "interface": "nope0"}, false)
	bad.Secrets = req.Secrets
	d.Node.NodePublishVolume(context.Background(), bad)
	if _, err := d.Node.NodeUnpublishVolume(context.Background(), unpublishReq("vol-secret", target)); err != nil {
		t.Fatal(err)
	}
	klog.Flush()
	out := logs.String()
	if !strings.Contains(out, "NodePublishVolume") {
		t.Fatalf("captured no call logs; the test would prove nothing:\n%s", out)
	}
	for _, s := range []string{secret, token, "hunter2"} {
		if strings.Contains(out, s) {
			t.Fatalf("logs contain a secret (%q):\n%s", s, out)
		}
	}
	d.AssertClean(t, v, target)
}

func TestDenialBecomesPodEvent(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, r.URL.Path+" "+string(b))
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
	}))
	defer api.Close()
	rec := kube.New(api.URL, api.Client(), nil, "test-node")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go rec.Run(ctx)
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{Configure: func(o *driver.Options) { o.Events = rec }})
	target := filepath.Join(dir, "vol")
	expectCode(t, d, publishReq("vol-denied", target, podAttrs(img, v.Host, "web"), true), codes.PermissionDenied, "no policy")
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got := append([]string(nil), bodies...)
		mu.Unlock()
		if len(got) > 0 {
			for _, want := range []string{"/api/v1/namespaces/web/events ", `"reason":"LoadDenied"`, `"type":"Warning"`, `"name":"reader"`, "no policy is configured"} {
				if !strings.Contains(got[0], want) {
					t.Fatalf("event %s lacks %s", got[0], want)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no event recorded on the pod")
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.AssertClean(t, v, target)
}
