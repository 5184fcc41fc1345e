package chart

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/bpfmount/bpfmount/test/chart/render"
)

var (
	repoRoot  = filepath.Join("..", "..")
	chartDir  = filepath.Join(repoRoot, "charts", "bpfmount")
	manifests = filepath.Join(repoRoot, "deploy", "manifests")
	examples  = filepath.Join(repoRoot, "deploy", "examples")
)

const (
	driverName  = "csi.bpfmount.io"
	releaseName = "bpfmount"
	releaseNS   = "bpfmount"
)

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	chrt, err := render.Load(chartDir)
	if err != nil {
		t.Fatalf("loading the chart: %v", err)
	}
	return chrt
}

// renderValues renders the chart with valuesYAML (a values file's content)
// over the defaults.
func renderValues(t *testing.T, valuesYAML string) (*render.Result, error) {
	t.Helper()
	vals, err := chartutil.ReadValues([]byte(valuesYAML))
	if err != nil {
		t.Fatalf("bad test values: %v", err)
	}
	return render.Render(loadChart(t), vals, render.Options{Name: releaseName, Namespace: releaseNS})
}

// decodeStrict decodes one YAML document into a typed object: duplicate
// keys, unknown fields and fields in the wrong case are errors, as in
// `kubectl apply --validate=strict`.
func decodeStrict(doc []byte, into any) error {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(js, into, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// podMonitor is the part of the Prometheus Operator's PodMonitor
// (monitoring.coreos.com/v1) the chart writes. The operator's Go types are
// not imported (a large module for one object); decoding strictly into
// this subset still catches misspelled or misplaced fields, and a field
// the chart starts to use must be added here deliberately.
type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector"`
		PodMetricsEndpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
			Relabelings   []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
			} `json:"relabelings"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// newTyped returns an empty typed object for apiVersion and kind.
func newTyped(apiVersion, kind string) (any, bool) {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}, true
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1/Service":
		return &corev1.Service{}, true
	case "v1/Pod":
		return &corev1.Pod{}, true
	case "v1/Secret":
		return &corev1.Secret{}, true
	case "apps/v1/DaemonSet":
		return &appsv1.DaemonSet{}, true
	case "storage.k8s.io/v1/CSIDriver":
		return &storagev1.CSIDriver{}, true
	case "rbac.authorization.k8s.io/v1/ClusterRole":
		return &rbacv1.ClusterRole{}, true
	case "rbac.authorization.k8s.io/v1/ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}, true
	case "monitoring.coreos.com/v1/PodMonitor":
		return &podMonitor{}, true
	}
	return nil, false
}

// decoded is one strictly decoded object.
type decoded struct {
	Source string
	Kind   string
	Obj    any
}

// decodeDoc decodes one document into its typed object.
func decodeDoc(source string, doc []byte) (decoded, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return decoded{}, fmt.Errorf("%s: %w", source, err)
	}
	obj, ok := newTyped(tm.APIVersion, tm.Kind)
	if !ok {
		return decoded{}, fmt.Errorf("%s: no typed check for apiVersion %q kind %q: add it to newTyped", source, tm.APIVersion, tm.Kind)
	}
	if err := decodeStrict(doc, obj); err != nil {
		return decoded{}, fmt.Errorf("%s (%s): %w", source, tm.Kind, err)
	}
	return decoded{Source: source, Kind: tm.Kind, Obj: obj}, nil
}

// decodeRendered decodes every object of a render.
func decodeRendered(t *testing.T, res *render.Result) []decoded {
	t.Helper()
	var out []decoded
	for _, o := range res.Objects {
		d, err := decodeDoc(o.Source, []byte(o.Content))
		if err != nil {
			t.Error(err)
			continue
		}
		out = append(out, d)
	}
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// splitDocs splits a multi-document YAML stream, dropping empty documents.
func splitDocs(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if isEmptyDoc(doc) {
			continue
		}
		docs = append(docs, doc)
	}
}

func isEmptyDoc(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		l := strings.TrimSpace(line)
		if l != "" && l != "---" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

// objectsOf returns the decoded objects of type T.
func objectsOf[T any](objs []decoded) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.Obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// one returns the only decoded object of type T.
func one[T any](t *testing.T, objs []decoded) T {
	t.Helper()
	l := objectsOf[T](objs)
	if len(l) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, got %d", zero, len(l))
	}
	return l[0]
}
