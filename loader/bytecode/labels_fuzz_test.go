package bytecode

import (
	"testing"
)

// FuzzParseLabels: whatever an image's labels say, parsing either fails
// with an error or yields only plain identifiers, which are safe as map and
// program names, file names and log fields.
func FuzzParseLabels(f *testing.F) {
	f.Add(`{"xdp_stats":"xdp"}`, `{"xdp_stats_map":"per_cpu_array"}`, "", "")
	f.Add("", "", "xdp_stats", "xdp")
	f.Add(`{"../../etc":"xdp"}`, `{}`, "", "")
	f.Add(`{"a":"xdp","b":"tc"}`, `{"m":"hash"}`, "f", "tcx")
	f.Fuzz(func(t *testing.T, progs, maps, fn, typ string) {
		labels := map[string]string{}
		if progs != "" {
			labels[LabelPrograms] = progs
		}
		if maps != "" {
			labels[LabelMaps] = maps
		}
		if fn != "" {
			labels[LabelV1FunctionName] = fn
		}
		if typ != "" {
			labels[LabelV1ProgramType] = typ
		}
		l, err := ParseLabels(labels)
		if err != nil {
			return
		}
		if len(l.Programs) == 0 {
			t.Fatal("accepted labels with no program")
		}
		for k, v := range l.Programs {
			if !IsIdentifier(k) || !IsIdentifier(v) {
				t.Fatalf("accepted program %q of type %q", k, v)
			}
		}
		for k, v := range l.Maps {
			if !IsIdentifier(k) || !IsIdentifier(v) {
				t.Fatalf("accepted map %q of type %q", k, v)
			}
		}
	})
}
