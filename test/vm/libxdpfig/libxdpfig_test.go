package libxdpfig

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseFindsEachKernel(t *testing.T) {
	a := Figures{Kernel: "6.1", Repeat: 1000, Rounds: 5, AddRounds: 5,
		Frame: []Frame{{1, 105, 86}}, Add: []Add{{1, 147.9, 119.8}}}
	b := a
	b.Kernel = "6.12"
	out := "=== RUN   TestLibxdpSideBySide\n" +
		"    libxdp_bench_test.go:51: " + a.Line() + "\n" +
		"noise libxdp-figures-not-this\n" +
		"[6.12]     libxdp_bench_test.go:51: " + b.Line() + "\n"
	got, err := Parse(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if want := []Figures{a, b}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestParseRefusesBrokenLines(t *testing.T) {
	for _, line := range []string{
		Marker + "{not json",
		Marker + `{"kernel":"6.1"}`,
		Marker + `{"frame":[{"members":1}],"add":[{"k":1}]}`,
	} {
		if _, err := Parse(strings.NewReader(line + "\n")); err == nil {
			t.Errorf("%q: no error", line)
		}
	}
}
