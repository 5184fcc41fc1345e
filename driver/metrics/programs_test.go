package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// gatherPrograms collects the per-program series of fn.
func gatherPrograms(t *testing.T, fn func() []Program) map[string][]*dto.Metric {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	c := &programCollector{programs: fn}
	reg.MustRegister(c)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string][]*dto.Metric{}
	for _, f := range fams {
		out[f.GetName()] = f.Metric
	}
	return out
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.Label {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func TestProgramLabel(t *testing.T) {
	for name, want := range map[string]string{
		"xdp_count":               "xdp_count",
		"_x":                      "_x",
		strings.Repeat("a", 64):   strings.Repeat("a", 64),
		strings.Repeat("a", 65):   InvalidLabel,
		"":                        InvalidLabel,
		"9lives":                  InvalidLabel,
		"prog\",evil=\"1":         InvalidLabel,
		"a\nb":                    InvalidLabel,
		"café":                    InvalidLabel,
		"prog-with-dash":          InvalidLabel,
		"{{ .Values.something }}": InvalidLabel,
	} {
		if got := ProgramLabel(name); got != want {
			t.Errorf("ProgramLabel(%q) = %q, want %q", name, got, want)
		}
	}
}

// Whatever a pod's image names its programs and maps, the label values
// come from a bounded set: valid identifiers, or "invalid".
func TestProgramSeriesHostileNames(t *testing.T) {
	hostile := []string{strings.Repeat("x", 4096), "a b", "\x00", "名前", "prog\"}", "ok_name"}
	var progs []Program
	for i, n := range hostile {
		progs = append(progs, Program{
			ID: uint32(100 + i), Name: n, Hook: "xdp", Interface: "eth0", Namespaces: []string{"web", "other", "web"},
			Run:  &Run{Count: uint64(i), Seconds: float64(i) / 1e6},
			Maps: []Map{{Name: n, Bytes: 10}, {Name: n + "\x01", Bytes: 5}},
		})
	}
	progs = append(progs, Program{ID: 200, Name: "x", Hook: "../../etc", Interface: "a-very-long-interface-name", Namespaces: []string{"local"}, Run: &Run{}})
	got := gatherPrograms(t, func() []Program { return progs })
	runs := got["bpfmount_program_run_count_total"]
	if len(runs) != len(progs) {
		t.Fatalf("%d run series for %d programs", len(runs), len(progs))
	}
	if n := len(got["bpfmount_program_run_seconds_total"]); n != len(progs) {
		t.Fatalf("%d run time series for %d programs", n, len(progs))
	}
	for _, m := range append(runs, got["bpfmount_map_memory_bytes"]...) {
		l := labels(m)
		for _, k := range []string{"program", "map"} {
			if v, ok := l[k]; ok && v != InvalidLabel && v != "ok_name" && v != "x" {
				t.Errorf("%s label %q escaped the bound", k, v)
			}
		}
		if l["id"] == "200" && (l["hook"] != InvalidLabel || l["interface"] != InvalidLabel) {
			t.Errorf("hook %q, interface %q not bounded", l["hook"], l["interface"])
		}
		if l["id"] != "200" && l["namespaces"] != "other,web" {
			t.Errorf("namespaces = %q; want the sorted set other,web", l["namespaces"])
		}
	}
	// Two maps of one program whose names are both invalid are one series
	// with their memory added up: nothing is lost, nothing repeats.
	for _, m := range got["bpfmount_map_memory_bytes"] {
		if l := labels(m); l["map"] == InvalidLabel && l["program"] == InvalidLabel && m.GetGauge().GetValue() != 15 {
			t.Errorf("map series %v = %v; want 15 (10 + 5)", l, m.GetGauge().GetValue())
		}
	}
}

// Without run statistics, no run series exists (not zeros); map memory is
// still reported, and says whether it was estimated.
func TestProgramSeriesWithoutRun(t *testing.T) {
	got := gatherPrograms(t, func() []Program {
		return []Program{{ID: 1, Name: "p", Hook: "tcx/ingress", Interface: "eth0", Namespaces: []string{"local"},
			Maps: []Map{{Name: "m", Bytes: 320, Estimated: true}, {Name: "k", Bytes: 4096}}}}
	})
	if _, ok := got["bpfmount_program_run_count_total"]; ok {
		t.Error("run count exported without run statistics")
	}
	if _, ok := got["bpfmount_program_run_seconds_total"]; ok {
		t.Error("run time exported without run statistics")
	}
	mem := got["bpfmount_map_memory_bytes"]
	if len(mem) != 2 {
		t.Fatalf("%d map series, want 2", len(mem))
	}
	for _, m := range mem {
		l := labels(m)
		want := map[string]string{"m": SourceEstimate, "k": SourceKernel}[l["map"]]
		if l["source"] != want || l["hook"] != "tcx/ingress" || l["program"] != "p" || l["id"] != "1" || l["namespaces"] != "local" {
			t.Errorf("map series labels %v", l)
		}
	}
}

func TestProgramSeriesValues(t *testing.T) {
	got := gatherPrograms(t, func() []Program {
		return []Program{{ID: 7, Name: "xdp_count", Hook: "xdp", Interface: "eth0", Namespaces: []string{"web"}, Run: &Run{Count: 12, Seconds: 0.5}}}
	})
	if v := got["bpfmount_program_run_count_total"][0].GetCounter().GetValue(); v != 12 {
		t.Errorf("run count = %v", v)
	}
	if v := got["bpfmount_program_run_seconds_total"][0].GetCounter().GetValue(); v != 0.5 {
		t.Errorf("run seconds = %v", v)
	}
}

// The process registry serves them.
func TestProgramSeriesRegistered(t *testing.T) {
	SetProgramsFunc(func() []Program {
		return []Program{{ID: 3, Name: "xdp_count", Hook: "xdp", Interface: "eth0", Namespaces: []string{"local"}, Run: &Run{Count: 2}}}
	})
	t.Cleanup(func() { SetProgramsFunc(nil) })
	body := scrape(t)
	want := `bpfmount_program_run_count_total{hook="xdp",id="3",interface="eth0",namespaces="local",program="xdp_count"} 2`
	if !strings.Contains(body, want) {
		t.Errorf("scrape lacks %s", want)
	}
}
