package chart

import (
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"sigs.k8s.io/yaml"
)

// TestRenderPrograms: the programs value becomes a ConfigMap the driver
// parses, mounted where --programs points.
func TestRenderPrograms(t *testing.T) {
	for _, c := range []struct {
		values string
		names  []string
	}{
		{"", []string(nil)},
		{"programs: [{name: node-counter, attributes: {image: registry.example/bpf/xdp-counter:v1, interface: eth0, priority: 10}}, {name: fw, attributes: {image: 'oci:/var/lib/bpfmount/bytecode/fw:v1', interface: eth1}}]", []string{"node-counter", "fw"}},
	} {
		res, err := renderValues(t, c.values)
		if err != nil {
			t.Fatalf("%q: %v", c.values, err)
		}
		objs := decodeRendered(t, res)
		ds := one[*appsv1.DaemonSet](t, objs)
		var cmName string
		for _, v := range ds.Spec.Template.Spec.Volumes {
			if v.Name == "programs" && v.ConfigMap != nil {
				cmName = v.ConfigMap.Name
			}
		}
		mounted := false
		for _, m := range ds.Spec.Template.Spec.Containers[0].VolumeMounts {
			mounted = mounted || m.Name == "programs" && m.MountPath == "/etc/bpfmount-programs" && m.ReadOnly
		}
		if cmName == "" || !mounted {
			t.Fatalf("%q: no programs ConfigMap volume mounted read-only at /etc/bpfmount-programs", c.values)
		}
		var data string
		for _, cm := range objectsOf[*corev1.ConfigMap](objs) {
			if cm.Name == cmName {
				data = cm.Data["programs.yaml"]
			}
		}
		// The driver's format (driver/programs.go): strict, every
		// attribute a string.
		var doc struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Programs   []struct {
				Name       string            `json:"name"`
				Attributes map[string]string `json:"attributes"`
			} `json:"programs"`
		}
		if err := yaml.UnmarshalStrict([]byte(data), &doc); err != nil {
			t.Fatalf("%q: the rendered programs do not decode: %v\n%s", c.values, err, data)
		}
		if doc.APIVersion != "bpfmount.io/v1alpha1" || doc.Kind != "NodePrograms" || doc.Programs == nil {
			t.Fatalf("%q: rendered programs file:\n%s", c.values, data)
		}
		var got []string
		for _, p := range doc.Programs {
			got = append(got, p.Name)
			if p.Attributes["image"] == "" {
				t.Errorf("%q: program %q has no image:\n%s", c.values, p.Name, data)
			}
		}
		if !slices.Equal(got, c.names) {
			t.Fatalf("%q: rendered programs %v, want %v:\n%s", c.values, got, c.names, data)
		}
	}
}
