package chart

import (
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"

	"github.com/bpfmount/bpfmount/test/chart/render"
)

// TestLint is `helm lint charts/bpfmount` (and with the values of every
// render scenario): no errors, and no warnings either.
func TestLint(t *testing.T) {
	kv, err := chartutil.ParseKubeVersion(render.KubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			vals, err := chartutil.ReadValues([]byte(sc.values))
			if err != nil {
				t.Fatal(err)
			}
			l := lint.AllWithKubeVersion(chartDir, vals, releaseNS, kv)
			for _, m := range l.Messages {
				switch {
				case m.Severity >= support.WarningSev:
					t.Errorf("lint: %s", m)
				default:
					t.Logf("lint: %s", m)
				}
			}
		})
	}
}
