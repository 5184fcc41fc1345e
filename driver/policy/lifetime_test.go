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

func TestNamesCondition(t *testing.T) {
	p, err := Parse([]byte(`apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: fw
  namespaces: ["net-fw"]
  images: ["registry.example/bpf/*"]
  names: ["fw-*"]
- name: plain
  namespaces: ["web"]
  images: ["registry.example/bpf/*"]
local:
  names: ["node-*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	req := func(ns, name string) Request {
		return Request{Namespace: ns, Image: "registry.example/bpf/fw:v1", Interface: "eth0", Hook: "xdp", Priority: 1000, Name: name}
	}
	for _, c := range []struct {
		r    Request
		ok   bool
		want string
	}{
		{req("net-fw", "fw-edge"), true, ""},
		{req("net-fw", ""), true, ""},
		{req("net-fw", "counter"), false, `rule "fw" allows names ["fw-*"] only, not "counter"`},
		{req("web", "fw-edge"), false, `rule "plain" allows no program names, not "fw-edge"`},
		{req("web", ""), true, ""},
		{Request{Local: true, Image: "oci:/x:v1", Interface: "eth0", Priority: 1000, Name: "node-fw"}, true, ""},
		{Request{Local: true, Image: "oci:/x:v1", Interface: "eth0", Priority: 1000, Name: "fw-edge"}, false, `local section allows names ["node-*"] only`},
	} {
		d := p.Decide(c.r)
		if d.Allowed != c.ok || !strings.Contains(d.Reason, c.want) {
			t.Errorf("%+v: decision %+v, want allowed=%v saying %q", c.r, d, c.ok, c.want)
		}
	}
	// Without a local section, root may use any name.
	if d := Default().Decide(Request{Local: true, Image: "oci:/x:v1", Name: "anything"}); !d.Allowed {
		t.Errorf("default policy denies a local named request: %+v", d)
	}
	if _, err := Parse([]byte("apiVersion: bpfmount.io/v1alpha1\nkind: NodePolicy\nrules:\n- name: a\n  namespaces: [x]\n  images: [\"r/*\"]\n  names: []\n")); err == nil || !strings.Contains(err.Error(), "names is an empty list") {
		t.Errorf("empty names list: %v", err)
	}
}

func TestReadsCondition(t *testing.T) {
	p, err := Parse([]byte(`apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: monitoring
  namespaces: ["mon"]
  names: ["fw-*"]
- name: ops
  namespaces: ["ops"]
  names: ["*"]
  fromWritable: true
`))
	if err != nil {
		t.Fatal(err)
	}
	read := func(ns, name string, ro bool) Request {
		return Request{Namespace: ns, Name: name, Reads: true, ReadOnly: ro}
	}
	for _, c := range []struct {
		r    Request
		ok   bool
		want string
	}{
		{read("mon", "fw-edge", true), true, ""},
		{read("mon", "fw-edge", false), false, `may not read the maps of "fw-edge": rule "monitoring" allows read-only map-only volumes only`},
		{read("mon", "counter", true), false, `rule "monitoring" allows names ["fw-*"] only, not "counter"`},
		{read("web", "fw-edge", true), false, `no rule matches`},
		{read("ops", "counter", false), true, ""},
		// A rule without images loads nothing.
		{Request{Namespace: "mon", Image: "registry.example/bpf/x:v1", Interface: "eth0", Hook: "xdp", Priority: 1000, Name: "fw-x"}, false, `rule "monitoring" allows images [] only`},
	} {
		d := p.Decide(c.r)
		if d.Allowed != c.ok || !strings.Contains(d.Reason, c.want) {
			t.Errorf("%+v: decision %+v, want allowed=%v saying %q", c.r, d, c.ok, c.want)
		}
	}
}
