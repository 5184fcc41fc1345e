package chart

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	kubefake "helm.sh/helm/v3/pkg/kube/fake"
	"helm.sh/helm/v3/pkg/storage"
	"helm.sh/helm/v3/pkg/storage/driver"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// helmTemplate renders the chart the way `helm template` does (Helm's
// client-only install), with kubeVersion as --kube-version ("" for none).
func helmTemplate(t *testing.T, kubeVersion string) (string, error) {
	t.Helper()
	inst := action.NewInstall(&action.Configuration{Log: func(string, ...any) {}})
	inst.ClientOnly, inst.DryRun, inst.Replace = true, true, true
	inst.ReleaseName, inst.Namespace = releaseName, releaseNS
	if kubeVersion != "" {
		kv, err := chartutil.ParseKubeVersion(kubeVersion)
		if err != nil {
			t.Fatal(err)
		}
		inst.KubeVersion = kv
	}
	rel, err := inst.Run(loadChart(t), nil)
	if err != nil {
		return "", err
	}
	return rel.Manifest, nil
}

// A plain `helm template charts/bpfmount` renders: GitOps tools and people
// render charts without a cluster, where Helm assumes its offline default
// version (v1.20.0 in a build without Helm's release flags, as here).
func TestPlainHelmTemplateRenders(t *testing.T) {
	t.Logf("Helm's offline default Kubernetes version: %s", chartutil.DefaultCapabilities.KubeVersion.Version)
	for _, kv := range []string{"", chartutil.DefaultCapabilities.KubeVersion.Version, "v1.20.0", "v1.34.0"} {
		m, err := helmTemplate(t, kv)
		if err != nil {
			t.Errorf("helm template (kube version %q): %v", kv, err)
			continue
		}
		if !strings.Contains(m, "kind: DaemonSet") {
			t.Errorf("helm template (kube version %q) rendered no DaemonSet", kv)
		}
	}
}

// A version that cannot be Helm's offline default is checked offline too.
func TestHelmTemplateRefusesOldVersion(t *testing.T) {
	for _, kv := range []string{"v1.25.3", "v1.22.17-eks-1", "v1.19.16+k3s1"} {
		_, err := helmTemplate(t, kv)
		if err == nil || !strings.Contains(err.Error(), "needs Kubernetes 1.26 or newer") {
			t.Errorf("helm template --kube-version %s: err = %v, want a refusal naming 1.26", kv, err)
		}
	}
	if _, err := helmTemplate(t, "v1.26.0"); err != nil {
		t.Errorf("helm template --kube-version v1.26.0 (the minimum): %v", err)
	}
}

// An install always reaches the cluster: an old one is refused, even one
// whose version looks like Helm's offline default.
func TestInstallRefusesOldCluster(t *testing.T) {
	for _, c := range []struct {
		gitVersion string
		ok         bool
	}{
		{"v1.20.0", false}, // Helm's offline default, but a live cluster answers
		{"v1.25.0", false},
		{"v1.25.16+k3s1", false},
		{"v1.26.0", true},
		{"v1.34.1", true},
	} {
		t.Run(c.gitVersion, func(t *testing.T) {
			api := fakeAPIServer(t, c.gitVersion)
			cfg := &action.Configuration{
				RESTClientGetter: restGetter{&rest.Config{Host: api.URL}},
				KubeClient:       &kubefake.PrintingKubeClient{Out: io.Discard},
				Releases:         storage.Init(driver.NewMemory()),
				Log:              func(string, ...any) {},
			}
			inst := action.NewInstall(cfg)
			// A server-side dry run renders with the cluster exactly as an
			// install does, and stops before creating anything.
			inst.DryRunOption = "server"
			inst.ReleaseName, inst.Namespace = releaseName, releaseNS
			_, err := inst.Run(loadChart(t), nil)
			if c.ok && err != nil {
				t.Fatalf("install on Kubernetes %s: %v", c.gitVersion, err)
			}
			if !c.ok {
				want := "needs Kubernetes 1.26 or newer; this cluster runs " + c.gitVersion
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("install on Kubernetes %s: err = %v, want %q", c.gitVersion, err, want)
				}
			}
		})
	}
}

// fakeAPIServer answers what Helm asks of a cluster during an install's
// render: its version, discovery, and the lookup of kube-system.
func fakeAPIServer(t *testing.T, gitVersion string) *httptest.Server {
	major, rest, _ := strings.Cut(strings.TrimPrefix(gitVersion, "v"), ".")
	minor, _, _ := strings.Cut(rest, ".")
	replies := map[string]any{
		"/version": map[string]string{"major": major, "minor": minor, "gitVersion": gitVersion},
		"/api":     map[string]any{"kind": "APIVersions", "versions": []string{"v1"}},
		"/apis":    map[string]any{"kind": "APIGroupList", "apiVersion": "v1", "groups": []any{}},
		"/api/v1": map[string]any{"kind": "APIResourceList", "groupVersion": "v1", "resources": []any{
			map[string]any{"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace", "verbs": []string{"get", "list"}},
		}},
		"/api/v1/namespaces/kube-system": map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "kube-system"}},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reply, ok := replies[r.URL.Path]
		if !ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]any{"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(reply)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// restGetter is Helm's RESTClientGetter on a fixed config.
type restGetter struct{ cfg *rest.Config }

func (g restGetter) ToRESTConfig() (*rest.Config, error) { return rest.CopyConfig(g.cfg), nil }

func (g restGetter) ToDiscoveryClient() (discovery.CachedDiscoveryInterface, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(rest.CopyConfig(g.cfg))
	if err != nil {
		return nil, err
	}
	return memory.NewMemCacheClient(dc), nil
}

func (g restGetter) ToRESTMapper() (meta.RESTMapper, error) {
	dc, err := g.ToDiscoveryClient()
	if err != nil {
		return nil, err
	}
	return restmapper.NewDeferredDiscoveryRESTMapper(dc), nil
}

// shutdownGrace is the --shutdown-grace the chart derives from the pod's
// terminationGracePeriodSeconds.
func shutdownGrace(terminationSeconds int64) string {
	return fmt.Sprintf("%ds", max(1, terminationSeconds-10))
}

// Calls cancelled at shutdown get 5 s more: the grace plus that must end
// before the kubelet kills the container.
func TestShutdownGraceFitsTermination(t *testing.T) {
	for _, tgps := range []int64{0, 5, 16, 30, 120} {
		res, err := renderValues(t, fmt.Sprintf("terminationGracePeriodSeconds: %d\n", tgps))
		if err != nil {
			t.Fatalf("terminationGracePeriodSeconds %d: %v", tgps, err)
		}
		want := "--shutdown-grace=" + shutdownGrace(tgps)
		if !strings.Contains(res.Manifests, want) {
			t.Errorf("terminationGracePeriodSeconds %d: no %s in the DaemonSet", tgps, want)
		}
		var g int64
		fmt.Sscanf(shutdownGrace(tgps), "%ds", &g)
		if tgps >= 16 && g+5 > tgps {
			t.Errorf("terminationGracePeriodSeconds %d: grace %ds + 5 s runs past it", tgps, g)
		}
	}
}
