package chart

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/test/chart/render"
)

// TestManifestsUpToDate fails when deploy/manifests/bpfmount.yaml is not
// the chart rendered with its default values: run `make manifests`.
func TestManifestsUpToDate(t *testing.T) {
	want, err := render.DefaultManifests(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(manifests, "bpfmount.yaml")
	got, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) == want {
		return
	}
	gl, wl := strings.Split(string(got), "\n"), strings.Split(want, "\n")
	for i := 0; i < max(len(gl), len(wl)); i++ {
		var g, w string
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		if g != w {
			t.Fatalf("%s is out of date with charts/bpfmount: run `make manifests` (deploy/manifests/render.sh).\nFirst difference at line %d:\n committed: %q\n  rendered: %q", file, i+1, g, w)
		}
	}
}

// TestPlainManifests decodes every document under deploy/manifests
// strictly.
func TestPlainManifests(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(manifests, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s (%v)", manifests, err)
	}
	var kinds []string
	for _, f := range files {
		for _, d := range decodeFile(t, f) {
			kinds = append(kinds, d.Kind)
			if ns, ok := d.Obj.(*corev1.Namespace); ok {
				if ns.Name != releaseNS {
					t.Errorf("%s: namespace %q, want %q", f, ns.Name, releaseNS)
				}
				if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
					t.Errorf("%s: the driver's namespace must allow privileged pods", f)
				}
			}
		}
	}
	if !slices.Contains(kinds, "Namespace") || !slices.Contains(kinds, "DaemonSet") {
		t.Errorf("deploy/manifests has kinds %v, want the Namespace and the chart's objects", kinds)
	}
}

func decodeFile(t *testing.T, file string) []decoded {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := splitDocs(data)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if len(docs) == 0 {
		t.Fatalf("%s: no documents", file)
	}
	var out []decoded
	for i, doc := range docs {
		d, err := decodeDoc(filepath.Base(file)+"#"+string(rune('0'+i)), doc)
		if err != nil {
			t.Error(err)
			continue
		}
		out = append(out, d)
	}
	return out
}

// Volume attribute keys the driver accepts (README.md, "Volume
// attributes"; driver/attributes.go parses them).
var volumeAttributes = []string{
	"image", "program", "type", "interface", "priority", "proceedOn",
	"direction", "xdpMode", "maps", "globals", "pullPolicy", "attachTo",
}

// TestExamples decodes the example manifests strictly (Pods, Secrets and
// the Namespace only) and checks that the chart's default policy allows
// every example pod's volumes.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(examples, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples in %s (%v)", examples, err)
	}
	res, err := renderValues(t, "")
	if err != nil {
		t.Fatal(err)
	}
	var pol *policy.Policy
	for _, c := range objectsOf[*corev1.ConfigMap](decodeRendered(t, res)) {
		if data, ok := c.Data["policy.yaml"]; ok {
			if pol, err = policy.Parse([]byte(data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	secrets := map[string]*corev1.Secret{}
	var pods []*corev1.Pod
	var sawNamespace bool
	for _, f := range files {
		for _, d := range decodeFile(t, f) {
			switch o := d.Obj.(type) {
			case *corev1.Pod:
				pods = append(pods, o)
			case *corev1.Secret:
				secrets[o.Namespace+"/"+o.Name] = o
			case *corev1.Namespace:
				sawNamespace = true
				if o.Name != "bpfmount-examples" {
					t.Errorf("%s: namespace %q, want bpfmount-examples", f, o.Name)
				}
			default:
				t.Errorf("%s: %s is not a Pod, Secret or Namespace", f, d.Kind)
			}
		}
	}
	if !sawNamespace {
		t.Error("no Namespace among the examples")
	}
	var csiVolumes int
	for _, p := range pods {
		if p.Namespace != "bpfmount-examples" {
			t.Errorf("pod %s: namespace %q, want bpfmount-examples", p.Name, p.Namespace)
		}
		for _, v := range p.Spec.Volumes {
			if v.CSI == nil {
				continue
			}
			csiVolumes++
			checkExampleVolume(t, p, v, pol, secrets)
		}
	}
	if csiVolumes < 3 {
		t.Errorf("found %d bpfmount volumes in the examples, want at least 3", csiVolumes)
	}
	for key, s := range secrets {
		if s.Type != corev1.SecretTypeDockerConfigJson {
			t.Errorf("secret %s: type %q, want %s", key, s.Type, corev1.SecretTypeDockerConfigJson)
		}
		if _, ok := s.StringData[corev1.DockerConfigJsonKey]; !ok {
			if _, ok := s.Data[corev1.DockerConfigJsonKey]; !ok {
				t.Errorf("secret %s has no %s", key, corev1.DockerConfigJsonKey)
			}
		}
	}
}

func checkExampleVolume(t *testing.T, p *corev1.Pod, v corev1.Volume, pol *policy.Policy, secrets map[string]*corev1.Secret) {
	t.Helper()
	where := p.Name + " volume " + v.Name
	if v.CSI.Driver != driverName {
		t.Errorf("%s: driver %q, want %q", where, v.CSI.Driver, driverName)
	}
	for k := range v.CSI.VolumeAttributes {
		if !slices.Contains(volumeAttributes, k) {
			t.Errorf("%s: unknown volume attribute %q", where, k)
		}
	}
	attrs := v.CSI.VolumeAttributes
	readOnly := v.CSI.ReadOnly != nil && *v.CSI.ReadOnly
	if !readOnly {
		t.Errorf("%s: not readOnly (the default policy allows read-only volumes only)", where)
	}
	// Every container mounting it mounts it read-only.
	mounted := false
	for _, c := range p.Spec.Containers {
		for _, m := range c.VolumeMounts {
			if m.Name == v.Name {
				mounted = true
				if !m.ReadOnly {
					t.Errorf("%s: container %s mounts it read-write", where, c.Name)
				}
			}
		}
	}
	if !mounted {
		t.Errorf("%s: no container mounts it", where)
	}
	if ref := v.CSI.NodePublishSecretRef; ref != nil {
		if _, ok := secrets[p.Namespace+"/"+ref.Name]; !ok {
			t.Errorf("%s: nodePublishSecretRef %q is not among the examples", where, ref.Name)
		}
	}
	hook := attrs["type"]
	if hook == "" {
		hook = "xdp" // the example image's program type
	}
	req := policy.Request{
		Namespace: p.Namespace, ServiceAccount: "default", Pod: p.Name,
		Image: attrs["image"], Interface: attrs["interface"], Hook: hook, Priority: 1000, ReadOnly: readOnly,
	}
	if d := pol.Decide(req); !d.Allowed {
		t.Errorf("%s: the chart's default policy denies it: %s", where, d.Reason)
	}
}
