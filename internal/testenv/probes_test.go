package testenv

import (
	"strings"
	"testing"
)

// The tests attach to ProbeTargetSymbol: every probe source must define it.
func TestProbeSourcesDefineTheSymbol(t *testing.T) {
	for _, name := range ProbeNames {
		code, err := probeSources.ReadFile("probes/" + name + ".c")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(code), " int "+ProbeTargetSymbol+"(int i) {") {
			t.Errorf("%s.c does not define %s", name, ProbeTargetSymbol)
		}
	}
}
