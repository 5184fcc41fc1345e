package metrics

import (
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Program is one loaded program as the program collector reports it, read
// from the kernel at scrape time.
type Program struct {
	// ID is the kernel's program ID: it tells apart programs whose other
	// labels are equal (one image at two priorities on one hook).
	ID uint32
	// Name is the program's function name. It comes from the image, which
	// a pod names: the collector bounds it (see ProgramLabel).
	Name string
	// Hook is the attach point, with "/ingress" or "/egress" for tc and tcx.
	Hook string
	// Interface is the host interface; empty for hooks without one.
	Interface string
	// Namespaces are the namespace labels of the pods using the program,
	// already bounded by the policy (a namespace a rule names, "other",
	// "local").
	Namespaces []string
	// Run is nil when run-time statistics are not collected: then no run
	// series is exported, rather than zeros that would read as "idle".
	Run *Run
	// Maps are the program's maps.
	Maps []Map
}

// Run is a program's run-time statistics.
type Run struct {
	Count   uint64
	Seconds float64
}

// Map is the memory one map takes.
type Map struct {
	// Name comes from the image: bounded like program names.
	Name  string
	Bytes uint64
	// Estimated is true when the kernel reported no charge and the value is
	// computed from the map's key and value sizes and maximum entries.
	Estimated bool
}

// InvalidLabel replaces a name that is not a plain identifier.
const InvalidLabel = "invalid"

// Memory sources of bpfmount_map_memory_bytes.
const (
	SourceKernel   = "kernel"   // what the kernel charges the map (memlock)
	SourceEstimate = "estimate" // key, value and max entries: a lower bound
)

var (
	identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)
	hookRE  = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}(/(ingress|egress))?$`)
	ifaceRE = regexp.MustCompile(`^[A-Za-z0-9_.@:-]{1,15}$`)
)

// ProgramLabel is the label value of a program or map name. Names come from
// images, which pods choose, so only what a C compiler could have produced
// for a function or map (an identifier of at most 64 bytes) is kept, and
// anything else becomes InvalidLabel.
func ProgramLabel(name string) string {
	if identRE.MatchString(name) {
		return name
	}
	return InvalidLabel
}

// hookLabel and ifaceLabel keep the hook and interface labels to the shape
// the loader produces; the loader only attaches to hooks it knows and to
// interfaces that exist, so these never fire in practice.
func hookLabel(h string) string {
	if hookRE.MatchString(h) {
		return h
	}
	return InvalidLabel
}

func ifaceLabel(i string) string {
	if i == "" || ifaceRE.MatchString(i) {
		return i
	}
	return InvalidLabel
}

// namespacesLabel joins a program's namespace labels, sorted and without
// repeats: a program shared by pods of two namespaces is one series
// ("a,b"), so summing the series never counts a run twice.
func namespacesLabel(ns []string) string {
	set := map[string]bool{}
	for _, n := range ns {
		set[n] = true
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

var (
	programLabels = []string{"program", "id", "hook", "interface", "namespaces"}
	runCountDesc  = prometheus.NewDesc(namespace+"_program_run_count_total",
		"Times each loaded program ran, from the kernel's run-time statistics (only while the daemon holds them enabled, --program-stats). "+
			"program is the function name, or \"invalid\" when it is not an identifier of at most 64 bytes; namespaces are the pods' namespaces as in bpfmount_policy_denials_total, comma-separated.",
		programLabels, nil)
	runSecondsDesc = prometheus.NewDesc(namespace+"_program_run_seconds_total",
		"Time each loaded program spent running, from the kernel's run-time statistics (only while the daemon holds them enabled, --program-stats). Labels as bpfmount_program_run_count_total.",
		programLabels, nil)
	mapMemoryDesc = prometheus.NewDesc(namespace+"_map_memory_bytes",
		"Memory of each loaded program's maps: source=\"kernel\" is what the kernel charges (memlock), source=\"estimate\" is computed from key and value sizes and max entries where the kernel reports nothing. "+
			"map is bounded like program; other labels as bpfmount_program_run_count_total.",
		append(append([]string{}, programLabels...), "map", "source"), nil)
)

type programCollector struct {
	mu       sync.Mutex
	programs func() []Program
}

func (c *programCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- runCountDesc
	ch <- runSecondsDesc
	ch <- mapMemoryDesc
}

func (c *programCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	fn := c.programs
	c.mu.Unlock()
	if fn == nil {
		return
	}
	// A repeated label set would fail the whole scrape. Run series cannot
	// repeat (the program ID differs); maps can, when two names are both
	// "invalid": their memory is added up.
	seenRun := map[string]bool{}
	type mapSeries struct {
		labels []string
		bytes  float64
	}
	var mapOrder []string
	maps := map[string]*mapSeries{}
	for _, p := range fn() {
		labels := []string{ProgramLabel(p.Name), strconv.FormatUint(uint64(p.ID), 10), hookLabel(p.Hook), ifaceLabel(p.Interface), namespacesLabel(p.Namespaces)}
		if k := strings.Join(labels, "\x00"); p.Run != nil && !seenRun[k] {
			seenRun[k] = true
			ch <- prometheus.MustNewConstMetric(runCountDesc, prometheus.CounterValue, float64(p.Run.Count), labels...)
			ch <- prometheus.MustNewConstMetric(runSecondsDesc, prometheus.CounterValue, p.Run.Seconds, labels...)
		}
		for _, m := range p.Maps {
			source := SourceKernel
			if m.Estimated {
				source = SourceEstimate
			}
			ml := append(append([]string{}, labels...), ProgramLabel(m.Name), source)
			k := strings.Join(ml, "\x00")
			if maps[k] == nil {
				maps[k] = &mapSeries{labels: ml}
				mapOrder = append(mapOrder, k)
			}
			maps[k].bytes += float64(m.Bytes)
		}
	}
	for _, k := range mapOrder {
		ch <- prometheus.MustNewConstMetric(mapMemoryDesc, prometheus.GaugeValue, maps[k].bytes, maps[k].labels...)
	}
}

var programs = &programCollector{}

// SetProgramsFunc sets the function the per-program series are read from
// at scrape time; nil exports none.
func SetProgramsFunc(fn func() []Program) {
	programs.mu.Lock()
	programs.programs = fn
	programs.mu.Unlock()
}
