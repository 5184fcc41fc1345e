package policy

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

const testPolicy = `
apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: monitoring
  namespaces: ["monitoring", "net-*"]
  serviceAccounts: ["collector"]
  images: ["registry.example/bpf/*"]
  interfaces: ["eth*"]
  hooks: ["xdp", "tcx"]
  priorities: {min: 10, max: 500}
- name: monitoring-any-sa
  namespaces: ["monitoring"]
  images: ["registry.example/other/*"]
  readOnlyOnly: true
- name: pinned
  namespaces: ["secure"]
  images: ["registry.example/bpf/**"]
  requireDigest: true
  requireSignature: true
- name: local-registry
  namespaces: ["dev"]
  images: ["localhost:5000/bpf/*", "registry.example/bpf/*"]
- name: lab
  namespaces: ["lab"]
  images: ["oci:/srv/bytecode/*", "**"]
- name: playground
  namespaces: ["playground"]
  images: ["**"]
- name: norway
  namespaces: ["no"]
  images: ["registry.example/bpf/*"]
local:
  images: ["registry.example/bpf/**", "oci:/srv/bytecode/**"]
  interfaces: ["eth*", "lo"]
  hooks: ["xdp", "tc"]
  priorities: {max: 100}
`

const smallPolicy = `
apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: monitoring
  namespaces: ["monitoring"]
  images: ["registry.example/bpf/*"]
- name: other
  namespaces: ["other"]
  serviceAccounts: ["x"]
  images: ["elsewhere/*"]
  interfaces: ["wlan*"]
`

const noRulesPolicy = `
apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
`

func mustParse(t testing.TB, s string) *Policy {
	t.Helper()
	p, err := Parse([]byte(s))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func TestDecide(t *testing.T) {
	full := mustParse(t, testPolicy)
	small := mustParse(t, smallPolicy)
	noRules := mustParse(t, noRulesPolicy)

	// pod builds a request that the "monitoring" rule allows, then applies edits.
	pod := func(edit func(*Request)) Request {
		r := Request{Namespace: "monitoring", ServiceAccount: "collector", Pod: "p",
			Image: "registry.example/bpf/xdp-counter:v1", Interface: "eth0", Hook: "xdp", Priority: 50}
		if edit != nil {
			edit(&r)
		}
		return r
	}
	local := func(edit func(*Request)) Request {
		r := Request{Local: true, Image: "registry.example/bpf/xdp-counter:v1", Interface: "eth0", Hook: "xdp", Priority: 50}
		if edit != nil {
			edit(&r)
		}
		return r
	}
	ns := func(n, sa, img string) func(*Request) {
		return func(r *Request) { r.Namespace, r.ServiceAccount, r.Image = n, sa, img }
	}

	cases := []struct {
		name    string
		pol     *Policy
		req     Request
		allowed bool
		rule    string
		sig     bool
		frag    string // must appear in Reason (denials only)
	}{
		// Namespaces, service accounts, first match decides.
		{"allow exact namespace", full, pod(nil), true, "monitoring", false, ""},
		{"allow glob namespace", full, pod(ns("net-edge", "collector", "registry.example/bpf/x:v1")), true, "monitoring", false, ""},
		{"deny image of deciding rule", full, pod(ns("monitoring", "collector", "reg/x:1")), false, "monitoring", false,
			`namespace "monitoring" may not load "reg/x:1" on "eth0": rule "monitoring" allows images ["registry.example/bpf/*"] only`},
		{"first match decides, no fall-through", full, pod(ns("monitoring", "collector", "registry.example/other/x:v1")), false, "monitoring", false,
			`rule "monitoring" allows images`},
		{"service account mismatch skips to next rule", full,
			pod(func(r *Request) { r.ServiceAccount, r.Image, r.ReadOnly = "other", "registry.example/other/x:v1", true }),
			true, "monitoring-any-sa", false, ""},
		{"empty service account skips rule with serviceAccounts", full,
			pod(func(r *Request) { r.ServiceAccount, r.Image, r.ReadOnly = "", "registry.example/other/x:v1", true }),
			true, "monitoring-any-sa", false, ""},
		{"next rule decides after SA mismatch", full, pod(ns("monitoring", "other", "registry.example/bpf/x:v1")), false, "monitoring-any-sa", false,
			`rule "monitoring-any-sa" allows images ["registry.example/other/*"] only`},
		{"readOnlyOnly denies writable volume", full, pod(ns("monitoring", "other", "registry.example/other/x:v1")), false, "monitoring-any-sa", false,
			"allows read-only volumes only: set readOnly: true"},
		{"quoted YAML 1.1 boolean is a namespace", full, pod(ns("no", "", "registry.example/bpf/x")), true, "norway", false, ""},

		// No rule matches: closest rule.
		{"closest rule example message", small, pod(ns("web", "default", "reg/x:1")), false, "", false,
			`namespace "web" may not load "reg/x:1" on "eth0": no rule matches (closest rule "monitoring": namespace not allowed)`},
		{"closest rule fewest failures", full, pod(ns("web", "default", "reg/x:1")), false, "", false,
			`no rule matches (closest rule "lab": namespace not allowed)`},
		{"closest rule ties go to first, names service account", full, pod(ns("net-edge", "default", "registry.example/bpf/x:v1")), false, "", false,
			`no rule matches (closest rule "monitoring": service account "default" not allowed)`},
		{"policy without rules", noRules, pod(nil), false, "", false, "no rule matches (the node policy has no rules)"},

		// Interfaces, hooks, priorities.
		{"interface not allowed", full, pod(func(r *Request) { r.Interface = "wlan0" }), false, "monitoring", false,
			`rule "monitoring" allows interfaces ["eth*"] only`},
		{"hook not allowed", full, pod(func(r *Request) { r.Hook = "tc" }), false, "monitoring", false,
			`rule "monitoring" allows hooks ["xdp", "tcx"] only, not "tc"`},
		{"hook tcx allowed", full, pod(func(r *Request) { r.Hook = "tcx" }), true, "monitoring", false, ""},
		{"unknown hook denied by default hooks", full, pod(func(r *Request) { r.Namespace, r.ServiceAccount, r.Hook = "playground", "", "kprobe" }), false, "playground", false,
			`allows hooks ["xdp", "tc", "tcx"] only, not "kprobe"`},
		{"priority below min", full, pod(func(r *Request) { r.Priority = 9 }), false, "monitoring", false,
			`rule "monitoring" allows priorities 10..500 only, not 9`},
		{"priority above max", full, pod(func(r *Request) { r.Priority = 501 }), false, "monitoring", false, "10..500 only, not 501"},
		{"priority at min", full, pod(func(r *Request) { r.Priority = 10 }), true, "monitoring", false, ""},
		{"priority at max", full, pod(func(r *Request) { r.Priority = 500 }), true, "monitoring", false, ""},
		{"default priority range excludes 0", full, pod(func(r *Request) { r.Namespace, r.ServiceAccount, r.Priority = "playground", "", 0 }), false, "playground", false,
			"1..1000 only, not 0"},

		// Image matching.
		{"star does not cross slash", full, pod(ns("monitoring", "collector", "registry.example/bpf/team/x:v1")), false, "monitoring", false, "allows images"},
		{"double star matches nested", full, pod(ns("secure", "", "registry.example/bpf/team/x@"+digest)), true, "pinned", true, ""},
		{"double star matches one element", full, pod(ns("secure", "", "registry.example/bpf/x@"+digest)), true, "pinned", true, ""},
		{"double star needs an element", full, pod(ns("secure", "", "registry.example/bpf@"+digest)), false, "pinned", true, "allows images"},
		{"double star prefix is exact", full, pod(ns("secure", "", "registry.example/bpfx/a@"+digest)), false, "pinned", true, "allows images"},
		{"host:port registry with tag", full, pod(ns("dev", "", "localhost:5000/bpf/x:v1")), true, "local-registry", false, ""},
		{"host:port registry without tag", full, pod(ns("dev", "", "localhost:5000/bpf/x")), true, "local-registry", false, ""},
		{"host:port registry wrong port", full, pod(ns("dev", "", "localhost:5001/bpf/x:v1")), false, "local-registry", false,
			`allows images ["localhost:5000/bpf/*", "registry.example/bpf/*"] only`},
		{"no default registry host added", full, pod(ns("playground", "", "cilium/xdp:v1")), true, "playground", false, ""},
		{"single-element repository", full, pod(ns("playground", "", "xdp:v1")), true, "playground", false, ""},

		// requireDigest / requireSignature.
		{"requireDigest denies tag", full, pod(ns("secure", "", "registry.example/bpf/x:v1")), false, "pinned", true,
			"requires the image to be pinned by digest: write it as registry.example/bpf/x@sha256:<digest>"},
		{"requireDigest tag and digest", full, pod(ns("secure", "", "registry.example/bpf/x:v1@"+digest)), true, "pinned", true, ""},
		{"malformed digest", full, pod(ns("secure", "", "registry.example/bpf/x@sha256:abc")), false, "", false, "the digest must be sha256: followed by 64 lowercase hex digits"},
		{"uppercase digest", full, pod(ns("playground", "", "registry.example/bpf/x@"+strings.ToUpper(digest))), false, "", false, "invalid image reference"},

		// oci: layouts.
		{"oci allowed by explicit pattern", full, pod(ns("lab", "", "oci:/srv/bytecode/x:v1")), true, "lab", false, ""},
		{"oci without tag", full, pod(ns("lab", "", "oci:/srv/bytecode/x")), true, "lab", false, ""},
		{"oci not matched by registry patterns", full, pod(ns("dev", "", "oci:/srv/bytecode/x")), false, "local-registry", false,
			`(a local oci: layout needs an explicit "oci:/..." pattern)`},
		{"oci not matched by double star", full, pod(ns("playground", "", "oci:/srv/bytecode/x")), false, "playground", false, `allows images ["**"] only`},
		{"oci dot-dot refused", full, pod(ns("lab", "", "oci:/srv/bytecode/../../etc/x")), false, "", false,
			`namespace "lab" may not load "oci:/srv/bytecode/../../etc/x" on "eth0": invalid image reference: an oci: layout must be an absolute path`},
		{"oci junk after @ refused", full, pod(ns("lab", "", "oci:/srv/bytecode/x@junk")), false, "", false, "invalid image reference"},
		{"oci pinned by digest", full, pod(ns("lab", "", "oci:/srv/bytecode/x@"+digest)), true, "lab", false, ""},
		{"oci star does not cross slash", full, pod(ns("lab", "", "oci:/srv/bytecode/a/b")), false, "lab", false, "allows images"},
		{"oci relative path refused", full, pod(ns("lab", "", "oci:srv/bytecode/x")), false, "", false, "(e.g. oci:/srv/bytecode/x)"},

		// Malformed requests.
		{"pod request without namespace", full, pod(ns("", "", "registry.example/bpf/x")), false, "", false, "carries no pod namespace"},
		{"empty image", full, pod(ns("monitoring", "collector", "")), false, "", false, "invalid image reference"},
		{"dot-dot in registry reference", full, pod(ns("playground", "", "registry.example/bpf/../x")), false, "", false, "invalid image reference"},

		// Local requests.
		{"local allowed by local section", full, local(nil), true, "local", false, ""},
		{"local oci nested allowed", full, local(func(r *Request) { r.Image = "oci:/srv/bytecode/a/b:v2" }), true, "local", false, ""},
		{"local oci outside denied", full, local(func(r *Request) { r.Image = "oci:/tmp/x" }), false, "local", false,
			`local request may not load "oci:/tmp/x" on "eth0": the policy's local section allows images ["registry.example/bpf/**", "oci:/srv/bytecode/**"] only`},
		{"local hook denied", full, local(func(r *Request) { r.Hook = "tcx" }), false, "local", false, `allows hooks ["xdp", "tc"] only, not "tcx"`},
		{"local priority max only", full, local(func(r *Request) { r.Priority = 101 }), false, "local", false, "priorities 1..100 only, not 101"},
		{"local interface lo", full, local(func(r *Request) { r.Interface = "lo" }), true, "local", false, ""},
		{"local interface denied", full, local(func(r *Request) { r.Interface = "wlan0" }), false, "local", false, `allows interfaces ["eth*", "lo"] only`},
		{"local relative oci refused", full, local(func(r *Request) { r.Image = "oci:layout" }), false, "local", false, "must be an absolute path"},
		{"local ignores pod rules", full, local(func(r *Request) { r.Namespace = "monitoring" }), true, "local", false, ""},
		{"no local section allows anything", small, local(func(r *Request) { r.Image, r.Hook = "oci:/anywhere", "tcx" }), true, "", false, ""},

		// Default and nil.
		{"default denies pods", Default(), pod(nil), false, "", false, noPolicyReason},
		{"default allows local oci", Default(), local(func(r *Request) { r.Image = "oci:/tmp/layout:latest" }), true, "", false, ""},
		{"nil policy is default", nil, pod(nil), false, "", false, "no policy is configured"},
	}
	if len(cases) < 30 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.pol.Decide(tc.req)
			if d.Allowed != tc.allowed || d.Rule != tc.rule || d.RequireSignature != tc.sig {
				t.Fatalf("Decide = %+v, want allowed=%v rule=%q sig=%v", d, tc.allowed, tc.rule, tc.sig)
			}
			if tc.allowed {
				if d.Reason != "" {
					t.Fatalf("allowed with reason %q", d.Reason)
				}
				return
			}
			if !strings.Contains(d.Reason, tc.frag) {
				t.Fatalf("reason %q\n does not contain %q", d.Reason, tc.frag)
			}
		})
	}
}

func TestDefaultMessage(t *testing.T) {
	want := "pods may not load eBPF programs on this node: no policy is configured (set policy.rules in the Helm values or pass --policy; see docs/policy.md)"
	if got := Default().Decide(Request{Namespace: "x", Image: "a/b"}).Reason; got != want {
		t.Fatalf("got %q", got)
	}
}

func TestLocalSectionWithoutImages(t *testing.T) {
	p := mustParse(t, noRulesPolicy+"local:\n  interfaces: [\"veth*\"]\n")
	if d := p.Decide(Request{Local: true, Image: "oci:/any/where", Interface: "veth1", Hook: "tc", Priority: 1}); !d.Allowed || d.Rule != "local" {
		t.Fatalf("got %+v", d)
	}
	if d := p.Decide(Request{Local: true, Image: "oci:/any/where", Interface: "eth0", Hook: "tc", Priority: 1}); d.Allowed {
		t.Fatalf("got %+v", d)
	}
}

func TestParseErrors(t *testing.T) {
	const head = "apiVersion: bpfmount.io/v1alpha1\nkind: NodePolicy\n"
	rule := func(extra string) string {
		return head + "rules:\n- name: a\n  namespaces: [x]\n  images: [\"reg/*\"]\n" + extra
	}
	cases := []struct{ name, doc, frag string }{
		{"unknown top-level field", head + "rulez: []\n", `policy: unknown field "rulez" (valid fields: apiVersion, kind, rules, local, keepAttached)`},
		{"unknown rule field", rule("  namespace: [ns2]\n"), `policy rules[0]: unknown field "namespace" (did you mean "namespaces"?)`},
		{"field names are case-sensitive", rule("  Hooks: [xdp]\n"), `unknown field "Hooks" (did you mean "hooks"?)`},
		{"unknown priorities field", rule("  priorities: {minimum: 3}\n"), `policy rules[0].priorities: unknown field "minimum"`},
		{"namespaces in local", head + "local:\n  namespaces: [x]\n", `policy local: unknown field "namespaces": the local section applies to requests without pod information`},
		{"unknown local field", head + "local:\n  imagez: [x]\n", `policy local: unknown field "imagez"`},
		{"missing name", head + "rules:\n- namespaces: [x]\n  images: [\"reg/*\"]\n", "rules[0]: name is required"},
		{"duplicate name", rule("- name: a\n  namespaces: [ns2]\n  images: [img]\n"), `rules[1] ("a"): duplicate rule name "a" (also rules[0])`},
		{"reserved name", head + "rules:\n- name: local\n  namespaces: [x]\n  images: [\"reg/*\"]\n", `name "local" is reserved`},
		{"missing namespaces", head + "rules:\n- name: a\n  images: [\"reg/*\"]\n", `rules[0] ("a"): namespaces is required`},
		{"missing images", head + "rules:\n- name: a\n  namespaces: [ns2]\n", `rules[0] ("a"): images is required`},
		{"empty images", head + "rules:\n- name: a\n  namespaces: [ns2]\n  images: []\n", "images is an empty list"},
		{"empty interfaces", rule("  interfaces: []\n"), "interfaces is an empty list: omit the field to allow any"},
		{"empty hooks", rule("  hooks: []\n"), "hooks is an empty list"},
		{"bad namespace glob", head + "rules:\n- name: a\n  namespaces: [\"net-[\"]\n  images: [\"reg/*\"]\n", `rules[0] ("a"): namespaces: bad pattern "net-["`},
		{"bad service account glob", rule("  serviceAccounts: [\"[a-\"]\n"), `serviceAccounts: bad pattern "[a-"`},
		{"bad interface glob", rule("  interfaces: [\"eth\\\\\"]\n"), `interfaces: bad pattern "eth\\"`},
		{"bad image glob", head + "rules:\n- name: a\n  namespaces: [x]\n  images: [\"reg/[x\"]\n", `rules[0] ("a"): images: bad pattern "reg/[x"`},
		{"bad image glob before double star", head + "rules:\n- name: a\n  namespaces: [x]\n  images: [\"reg/[x/**\"]\n", `images: bad pattern "reg/[x/**"`},
		{"double star in the middle", head + "rules:\n- name: a\n  namespaces: [x]\n  images: [\"reg/**/x\"]\n", `"**" is only allowed as the last path element`},
		{"image pattern with tag", head + "rules:\n- name: a\n  namespaces: [x]\n  images: [\"reg/x:v1\"]\n", "remove the :tag part"},
		{"image pattern with digest", head + "rules:\n- name: a\n  namespaces: [x]\n  images: [\"reg/x@sha256:00\"]\n", "remove the @... part"},
		{"relative oci pattern", head + "rules:\n- name: a\n  namespaces: [x]\n  images: [\"oci:srv/*\"]\n", "oci: patterns must be absolute paths"},
		{"unclean oci pattern", head + "rules:\n- name: a\n  namespaces: [x]\n  images: [\"oci:/srv/../etc/**\"]\n", `oci: patterns must be clean paths: write "oci:/etc/**"`},
		{"empty pattern", head + "rules:\n- name: a\n  namespaces: [\"\"]\n  images: [\"reg/*\"]\n", "namespaces contains an empty pattern"},
		{"min greater than max", rule("  priorities: {min: 500, max: 10}\n"), "priorities: min 500 is greater than max 10"},
		{"priority min below range", rule("  priorities: {min: 0}\n"), "priorities.min is 0: priorities range from 1 to 1000"},
		{"priority max above range", rule("  priorities: {max: 1001}\n"), "priorities.max is 1001"},
		{"local min greater than default max", head + "local:\n  priorities: {min: 2000}\n", "policy local: priorities.min is 2000"},
		{"unknown hook", rule("  hooks: [xdp, xpd]\n"), `hooks: unknown hook "xpd": valid hooks are ["xdp", "tc", "tcx", "tracepoint", "kprobe", "kretprobe", "uprobe", "uretprobe", "fentry", "fexit", "cgroup_skb", "cgroup_sock_addr", "sock_ops"]`},
		{"wrong apiVersion", "apiVersion: bpfmount.io/v1\nkind: NodePolicy\n", `apiVersion "bpfmount.io/v1" and kind "NodePolicy": want apiVersion: bpfmount.io/v1alpha1 and kind: NodePolicy`},
		{"wrong kind", "apiVersion: bpfmount.io/v1alpha1\nkind: Policy\n", `kind "Policy"`},
		{"empty document", "", "policy is empty"},
		{"not a mapping", "- a\n", "policy must be a YAML mapping"},
		{"invalid YAML", "rules: [\n", "policy is not valid YAML"},
		{"duplicate key", rule("  images: [\"other/*\"]\n"), `key "images" already set`},
		{"wrong type", rule("  priorities: 5\n"), `policy field "rules.priorities" is a number: want a mapping`},
		{"unquoted YAML 1.1 boolean", head + "rules:\n- name: a\n  namespaces: [x, no]\n  images: [\"reg/*\"]\n", `policy rules[0].namespaces[1] is a YAML boolean`},
		{"boolean name", head + "rules:\n- name: yes\n  namespaces: [x]\n  images: [\"reg/*\"]\n", `policy rules[0].name is a YAML boolean`},
		{"string instead of list", head + "rules:\n- name: a\n  namespaces: x\n  images: [\"reg/*\"]\n", `policy field "rules.namespaces" is a string: want a list of strings`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatalf("Parse succeeded, want error containing %q", tc.frag)
			}
			if !strings.Contains(err.Error(), tc.frag) {
				t.Fatalf("error %q\n does not contain %q", err, tc.frag)
			}
		})
	}
}

func TestParseValidEdgeCases(t *testing.T) {
	for _, doc := range []string{
		noRulesPolicy,
		noRulesPolicy + "rules: []\n",
		noRulesPolicy + "local: {}\n",
		noRulesPolicy + "rules:\n- name: a\n  namespaces: [\"*\"]\n  images: [\"**\", \"oci:/**\", \"localhost:5000/*\"]\n  priorities: {}\n",
		testPolicy,
	} {
		if _, err := Parse([]byte(doc)); err != nil {
			t.Errorf("Parse(%q): %v", doc, err)
		}
	}
}

// TestDocExample keeps the example in the package documentation valid.
func TestDocExample(t *testing.T) {
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var doc strings.Builder
	in := false
	for _, line := range strings.Split(string(src), "\n") {
		if body, ok := strings.CutPrefix(line, "//\t"); ok {
			in = true
			doc.WriteString(body + "\n")
		} else if in {
			break
		}
	}
	p, err := Parse([]byte(doc.String()))
	if err != nil {
		t.Fatalf("doc example: %v\n%s", err, doc.String())
	}
	if len(p.rules) != 2 || p.local == nil {
		t.Fatalf("doc example parsed to %d rules, local %v", len(p.rules), p.local != nil)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, good, smallPolicy)
	writeFile(t, bad, "apiVersion: nope\n")
	if _, err := Load(good); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("Load(bad) = %v, want error naming the file", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Fatal("Load(missing) succeeded")
	}
}

func TestStatic(t *testing.T) {
	p := mustParse(t, smallPolicy)
	var s Source = Static(p)
	if s.Current() != p {
		t.Fatal("Static does not return its policy")
	}
}

// ---------------------------------------------------------------------------
// Hot reload

func policyAllowing(ns string) string {
	return fmt.Sprintf("apiVersion: bpfmount.io/v1alpha1\nkind: NodePolicy\nrules:\n- name: %s\n  namespaces: [%q]\n  images: [\"reg/*\"]\n", ns, ns)
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeAtomic replaces p by rename, as editors and config tools do, so the
// watcher never sees a half-written file.
func writeAtomic(t *testing.T, p, content string) {
	t.Helper()
	tmp := p + ".tmp"
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

func ruleFor(s Source, ns string) string {
	return s.Current().Decide(Request{Namespace: ns, Image: "reg/x", Interface: "eth0", Hook: "xdp", Priority: 1}).Rule
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// seen reports whether the watcher has looked at content (good or bad).
func seen(w *Watcher, content string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last.sum == sha256.Sum256([]byte(content))
}

func startWatcher(t *testing.T, path string) *Watcher {
	t.Helper()
	w, err := NewWatcher(path, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

func TestWatcherReload(t *testing.T) {
	p := filepath.Join(t.TempDir(), "policy.yaml")
	writeAtomic(t, p, policyAllowing("one"))
	w := startWatcher(t, p)
	if got := ruleFor(w, "one"); got != "one" {
		t.Fatalf("initial policy: rule %q", got)
	}

	writeAtomic(t, p, policyAllowing("two"))
	waitFor(t, "reload to two", func() bool { return ruleFor(w, "two") == "two" })

	broken := "apiVersion: bpfmount.io/v1alpha1\nkind: NodePolicy\nrules:\n- name: x\n  namespaces: [\"[\"]\n  images: [\"reg/*\"]\n"
	writeAtomic(t, p, broken)
	waitFor(t, "broken file to be seen", func() bool { return seen(w, broken) })
	if got := ruleFor(w, "two"); got != "two" {
		t.Fatalf("after broken edit: rule %q, want previous policy kept", got)
	}

	// In-place rewrite with the same size and mtime: only the hash shows it.
	three := policyAllowing("333")
	four := policyAllowing("444")
	writeFile(t, p, three)
	waitFor(t, "reload to 333", func() bool { return ruleFor(w, "333") == "333" })
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, p, four)
	if err := os.Chtimes(p, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reload to 444", func() bool { return ruleFor(w, "444") == "444" })

	// A vanished file keeps the policy.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "missing file to be noticed", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.readErr != ""
	})
	if got := ruleFor(w, "444"); got != "444" {
		t.Fatalf("after removal: rule %q", got)
	}
	writeAtomic(t, p, policyAllowing("five"))
	waitFor(t, "reload to five", func() bool { return ruleFor(w, "five") == "five" })
}

// TestWatcherConfigMapSwap mimics kubelet's atomic writer: the watched path
// is a symlink to ..data/policy.yaml and ..data is a symlink to a timestamped
// directory, replaced by rename.
func TestWatcherConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name, "policy.yaml"), content)
	}
	swap := func(target string) {
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_01_01_a", policyAllowing("alpha"))
	swap("..2026_01_01_a")
	watched := filepath.Join(dir, "policy.yaml")
	if err := os.Symlink("..data/policy.yaml", watched); err != nil {
		t.Fatal(err)
	}

	w := startWatcher(t, watched)
	if got := ruleFor(w, "alpha"); got != "alpha" {
		t.Fatalf("initial: rule %q", got)
	}

	// Same length content, so only mtime and hash differ.
	version("..2026_01_01_b", policyAllowing("omega"))
	swap("..2026_01_01_b")
	if err := os.RemoveAll(filepath.Join(dir, "..2026_01_01_a")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reload after symlink swap", func() bool { return ruleFor(w, "omega") == "omega" })
}

func TestNewWatcherErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, "kind: NodePolicy\n")
	if _, err := NewWatcher(bad, time.Second); err == nil || !strings.Contains(err.Error(), "apiVersion") {
		t.Fatalf("bad file: %v", err)
	}
	if _, err := NewWatcher(filepath.Join(dir, "missing.yaml"), time.Second); err == nil {
		t.Fatal("missing file: no error")
	}
	good := filepath.Join(dir, "good.yaml")
	writeFile(t, good, smallPolicy)
	if _, err := NewWatcher(good, 0); err == nil {
		t.Fatal("zero interval: no error")
	}
	if _, err := NewWatcher(dir, time.Second); err == nil {
		t.Fatal("directory: no error")
	}
}

// ---------------------------------------------------------------------------
// Benchmark

func benchPolicy(b *testing.B) *Policy {
	var sb strings.Builder
	sb.WriteString("apiVersion: bpfmount.io/v1alpha1\nkind: NodePolicy\nrules:\n")
	for i := 0; i < 50; i++ {
		fmt.Fprintf(&sb, "- name: rule-%d\n  namespaces: [\"team-%d\", \"team-%d-*\"]\n  serviceAccounts: [\"sa-*\"]\n"+
			"  images: [\"registry.example/team-%d/*\", \"registry.example/shared/**\"]\n  interfaces: [\"eth*\", \"ens*\"]\n"+
			"  hooks: [xdp, tcx]\n  priorities: {min: 10, max: 900}\n", i, i, i, i)
	}
	return mustParse(b, sb.String())
}

func BenchmarkDecide(b *testing.B) {
	p := benchPolicy(b)
	for _, bc := range []struct {
		name string
		req  Request
		want bool
	}{
		{"allow-last-rule", Request{Namespace: "team-49", ServiceAccount: "sa-x", Image: "registry.example/shared/a/b@" + digest, Interface: "eth0", Hook: "xdp", Priority: 100}, true},
		{"deny-no-match", Request{Namespace: "web", ServiceAccount: "default", Image: "registry.example/team-3/x:v1", Interface: "eth0", Hook: "xdp", Priority: 100}, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if d := p.Decide(bc.req); d.Allowed != bc.want {
				b.Fatalf("Decide = %+v", d)
			}
			b.ReportAllocs()
			for b.Loop() {
				p.Decide(bc.req)
			}
		})
	}
}

// TestGlobFastPaths checks that the literal and prefix shortcuts agree with
// path.Match.
func TestGlobFastPaths(t *testing.T) {
	pats := []string{"net", "net-*", "*", "eth*", "a/b*", "a/*", "n?t", "[a-c]*", `x\*`, "**"}
	strs := []string{"", "net", "net-", "net-a", "net-a/b", "eth0", "a/b", "a/bc", "a/b/c", "nat", "b", "x*", "xy"}
	for _, p := range pats {
		for _, s := range strs {
			want, _ := path.Match(p, s)
			if got := compileGlob(p).match(s); got != want {
				t.Errorf("glob %q on %q: got %v, path.Match says %v", p, s, got, want)
			}
		}
	}
}

// Before the image names the hook, a request is denied only when no rule
// could allow it for any hook; the first rule matching the pod still
// decides, so the decision with the hook can only narrow it.
func TestDecideBeforeHookIsKnown(t *testing.T) {
	p := mustParse(t, testPolicy)
	req := func(ns, sa, image, ifname string, prio int, ro bool) Request {
		return Request{Namespace: ns, ServiceAccount: sa, Image: image, Interface: ifname, Priority: prio, ReadOnly: ro}
	}
	for _, c := range []struct {
		name    string
		r       Request
		allowed bool
		reason  string
	}{
		{"allowed for some hook", req("monitoring", "collector", "registry.example/bpf/x:1", "eth0", 50, false), true, ""},
		{"namespace matches no rule", req("other", "", "registry.example/bpf/x:1", "eth0", 50, false), false, "no rule matches"},
		{"image not allowed", req("monitoring", "collector", "evil.example/x:1", "eth0", 50, false), false, "allows images"},
		{"interface not allowed", req("monitoring", "collector", "registry.example/bpf/x:1", "wlan0", 50, false), false, "allows interfaces"},
		{"priority not allowed", req("monitoring", "collector", "registry.example/bpf/x:1", "eth0", 5, false), false, "allows priorities"},
		{"read-write where read-only is required", req("monitoring", "other-sa", "registry.example/other/x:1", "eth0", 50, false), false, "read-only"},
		{"digest required", req("secure", "", "registry.example/bpf/x:1", "eth0", 50, false), false, "pinned by digest"},
		{"oci layout without an oci pattern", req("dev", "", "oci:/srv/bytecode/x", "eth0", 50, false), false, "oci:"},
		{"local request", Request{Local: true, Image: "registry.example/bpf/x:1", Interface: "eth0", Priority: 50}, true, ""},
		{"local request, image not allowed", Request{Local: true, Image: "evil.example/x:1", Interface: "eth0", Priority: 50}, false, "local section"},
	} {
		d := p.Decide(c.r)
		if d.Allowed != c.allowed || !strings.Contains(d.Reason, c.reason) {
			t.Errorf("%s: %+v, want allowed=%v and a reason containing %q", c.name, d, c.allowed, c.reason)
		}
		if !d.Allowed {
			continue
		}
		// The hook, once known, is decided by the same rule.
		for _, h := range allHooks {
			r := c.r
			r.Hook = h
			d2 := p.Decide(r)
			if d2.Rule != d.Rule {
				t.Errorf("%s: hook %s decided by rule %q, not %q", c.name, h, d2.Rule, d.Rule)
			}
		}
	}
	r := req("monitoring", "collector", "registry.example/bpf/x:1", "eth0", 50, false)
	r.Hook = "tc"
	if d := p.Decide(r); d.Allowed || !strings.Contains(d.Reason, `allows hooks ["xdp", "tcx"] only, not "tc"`) {
		t.Errorf("tc after the fetch: %+v", d)
	}
}

// Metric labels name only the namespaces the policy names exactly.
func TestNamespaceLabel(t *testing.T) {
	p := mustParse(t, testPolicy)
	for ns, want := range map[string]string{
		"monitoring": "monitoring", "no": "no", "lab": "lab",
		"net-1":    OtherLabel, // matched by a glob only: unbounded
		"attacker": OtherLabel, "": LocalLabel,
	} {
		if got := p.NamespaceLabel(ns); got != want {
			t.Errorf("NamespaceLabel(%q) = %q, want %q", ns, got, want)
		}
	}
	if got := Default().NamespaceLabel("kube-system"); got != OtherLabel {
		t.Errorf("Default().NamespaceLabel = %q", got)
	}
	var nilPolicy *Policy
	if got := nilPolicy.NamespaceLabel("x"); got != OtherLabel {
		t.Errorf("nil policy: %q", got)
	}
}

// A rule's conditions and the local section are one type, decoded with the
// same care for strings: a quoted YAML 1.1 boolean or a number is a string.
func TestRuleConditionsDecoded(t *testing.T) {
	p := mustParse(t, `apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
rules:
- name: a
  namespaces: ["a"]
  images: ["reg/*"]
  interfaces: ["no", 123]
  hooks: ["tcx"]
  priorities: {min: 7, max: 9}
  readOnlyOnly: true
  requireDigest: true
  requireSignature: true
local:
  images: ["reg/*"]
  interfaces: [456]
`)
	c := p.rules[0].conditions
	if !slices.Equal(c.interfacesRaw, []string{"no", "123"}) || !slices.Equal(c.hooks, []string{"tcx"}) ||
		c.minPrio != 7 || c.maxPrio != 9 || !c.readOnlyOnly || !c.requireDigest || !c.requireSignature {
		t.Fatalf("rule conditions: %+v", c)
	}
	if !slices.Equal(p.local.interfacesRaw, []string{"456"}) {
		t.Fatalf("local conditions: %+v", p.local)
	}
}
