package policy

import (
	"strings"
	"testing"
	"time"
)

func TestKeepAttachedSection(t *testing.T) {
	head := "apiVersion: bpfmount.io/v1alpha1\nkind: NodePolicy\n"
	p, err := Parse([]byte(head + "keepAttached:\n  default: 10s\n  max: 5m\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.KeepAttached(); got.Default != 10*time.Second || got.Max != 5*time.Minute {
		t.Fatalf("keepAttached = %+v", got)
	}
	p, err = Parse([]byte(head + "rules: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.KeepAttached(); got != (KeepAttached{}) {
		t.Fatalf("without a section keepAttached = %+v, want zero", got)
	}
	if got := Default().KeepAttached(); got != (KeepAttached{}) {
		t.Fatalf("default policy keepAttached = %+v, want zero", got)
	}
	for _, c := range []struct{ doc, want string }{
		{"keepAttached: 30s\n", "must be a mapping"},
		{"keepAttached:\n  max: 30\n", "keepAttached.max must be a duration string"},
		{"keepAttached:\n  max: -1s\n", `"-1s" is not a non-negative duration`},
		{"keepAttached:\n  max: soon\n", `"soon" is not a non-negative duration`},
		{"keepAttached:\n  maximum: 1m\n", `unknown field "maximum"`},
		{"keepAttached:\n  default: 2m\n  max: 1m\n", "default 2m0s is over keepAttached.max 1m0s"},
	} {
		_, err := Parse([]byte(head + c.doc))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want it to say %q", c.doc, err, c.want)
		}
	}
}
