package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

const dashboardPath = "../../deploy/monitoring/bpfmount-dashboard.json"

// exportedNames returns every metric name the daemon's registry exports, as
// PromQL sees them (a histogram as its _bucket, _sum and _count series). The
// labelled metrics get one child each, and the scrape-time collectors some
// state, so that every family shows up.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	PublishDuration.WithLabelValues("xdp", "OK").Observe(0.001)
	UnpublishDuration.WithLabelValues("xdp", "OK").Observe(0.001)
	ImageFetches.WithLabelValues("pull").Inc()
	PolicyDenials.WithLabelValues("other").Inc()
	SetStateFunc(func() State {
		return State{Volumes: 1, Attachments: []Attachment{{Interface: "eth0", Hook: "xdp", Attached: true}},
			Dispatchers: []Dispatcher{{Interface: "eth0", Hook: "xdp", Revisions: 1}}}
	})
	SetProgramsFunc(func() []Program {
		return []Program{{ID: 1, Name: "p", Hook: "xdp", Interface: "eth0", Namespaces: []string{"local"}, Run: &Run{Count: 1}, Maps: []Map{{Name: "m", Bytes: 1}}}}
	})
	t.Cleanup(func() {
		SetStateFunc(nil)
		SetProgramsFunc(nil)
		PublishDuration.Reset()
		UnpublishDuration.Reset()
		ImageFetches.Reset()
		PolicyDenials.Reset()
	})
	fams, err := registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range fams {
		n := f.GetName()
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[n], names[n+"_sum"], names[n+"_count"] = true, true, true
		default:
			names[n] = true
		}
	}
	return names
}

var (
	promStringRE  = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	promMatcherRE = regexp.MustCompile(`\{[^{}]*\}`)
	promRangeRE   = regexp.MustCompile(`\[[^\[\]]*\]`)
	promGroupRE   = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promVarRE     = regexp.MustCompile(`\$\{?\w+\}?`)
	// A number (with a unit, as in 5m or 1e9) or an identifier.
	promTokenRE = regexp.MustCompile(`\d+(?:\.\d*)?(?:[eE][+-]?\d+)?[A-Za-z]*|0[xX][0-9a-fA-F]+|[A-Za-z_:][A-Za-z0-9_:]*`)
	// Words that are not metric names where a name could stand.
	promKeywords = map[string]bool{
		"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true, "without": true,
		"on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true,
		"Inf": true, "NaN": true, "start": true, "end": true,
	}
	labelValuesRE = regexp.MustCompile(`^\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)`)
)

// promMetricNames returns the metric names a PromQL expression selects:
// every identifier that is not in a string, a label matcher, a range, a
// grouping clause, a function call or a keyword.
func promMetricNames(expr string) []string {
	e := promStringRE.ReplaceAllString(expr, " ")
	e = promVarRE.ReplaceAllString(e, " ")
	e = promMatcherRE.ReplaceAllString(e, " ")
	e = promRangeRE.ReplaceAllString(e, " ")
	e = promGroupRE.ReplaceAllString(e, " ")
	var out []string
	for _, loc := range promTokenRE.FindAllStringIndex(e, -1) {
		tok := e[loc[0]:loc[1]]
		if tok[0] >= '0' && tok[0] <= '9' || promKeywords[tok] {
			continue
		}
		if rest := strings.TrimLeft(e[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") {
			continue // a function or an aggregation
		}
		out = append(out, tok)
	}
	return out
}

func TestPromMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (le, hook) (rate(a_bucket{instance=~"$instance",x="by (y)"}[$__rate_interval]))`: {"a_bucket"},
		`1e9 * sum(rate(b_total[5m])) / sum without (id) (rate(c_total[5m] offset 1h))`:          {"b_total", "c_total"},
		`(rate(d[1m])) and on (instance, job) e`:                                                 {"d", "e"},
		`histogram_quantile(0.99, sum by (le) (rate(f_bucket[1m]))) > bool 0.5`:                  {"f_bucket"},
		`x:recorded:rate5m + Inf`: {"x:recorded:rate5m"},
	} {
		got := promMetricNames(expr)
		if !slices.Equal(got, want) {
			t.Errorf("promMetricNames(%s) = %q, want %q", expr, got, want)
		}
	}
}

// walkExprs calls fn with every PromQL query in a Grafana dashboard: the
// targets' expr and the query variables' queries (label_values' metric).
func walkExprs(v any, where string, fn func(where, expr string)) {
	switch x := v.(type) {
	case map[string]any:
		if e, ok := x["expr"].(string); ok {
			title, _ := x["refId"].(string)
			fn(where+" target "+title, e)
		}
		if x["type"] == "query" {
			if q, ok := x["query"].(map[string]any); ok {
				if s, ok := q["query"].(string); ok {
					fn(where+" variable "+x["name"].(string), s)
				}
			}
		}
		if t, ok := x["title"].(string); ok {
			where = "panel " + strconv.Quote(t)
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			walkExprs(x[k], where, fn)
		}
	case []any:
		for _, e := range x {
			walkExprs(e, where, fn)
		}
	}
}

// Every query on the dashboard names only metrics the daemon exports, and
// the dashboard shows what operators ask for.
func TestDashboardQueriesUseExportedMetrics(t *testing.T) {
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s is not JSON: %v", dashboardPath, err)
	}
	exported := exportedNames(t)
	used := map[string]bool{}
	queries := 0
	walkExprs(dash, "dashboard", func(where, expr string) {
		queries++
		var names []string
		if m := labelValuesRE.FindStringSubmatch(expr); m != nil {
			names = []string{m[1]}
		} else {
			names = promMetricNames(expr)
		}
		if len(names) == 0 {
			t.Errorf("%s: %q selects no metric", where, expr)
		}
		for _, n := range names {
			used[n] = true
			if !exported[n] {
				t.Errorf("%s: %q names %s, which the daemon does not export", where, expr, n)
			}
		}
	})
	if queries < 10 {
		t.Fatalf("found %d queries in the dashboard; the walk is broken", queries)
	}
	for _, want := range []string{
		"bpfmount_publish_duration_seconds_bucket", "bpfmount_publish_duration_seconds_count",
		"bpfmount_volumes", "bpfmount_attachments", "bpfmount_policy_denials_total",
		"bpfmount_restore_errors_total", "bpfmount_image_fetches_total",
		"bpfmount_program_run_count_total", "bpfmount_program_run_seconds_total", "bpfmount_map_memory_bytes",
	} {
		if !used[want] {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
}
