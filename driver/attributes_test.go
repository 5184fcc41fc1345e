package driver

import (
	"bytes"
	"fmt"
	"maps"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/loader"
)

func TestParseAttributesDefaults(t *testing.T) {
	vr, err := parseAttributes(map[string]string{
		"image": "registry.example/bpf/xdp-counter:v1", "interface": "eth0",
		keyPodNamespace: "web", keyPodName: "p", keyServiceAccountTk: "secret-token",
	})
	if err != nil {
		t.Fatal(err)
	}
	lr := vr.load
	if lr.Priority != 0 || lr.Image.Policy != "IfNotPresent" || lr.Hook != "" || vr.maps != nil {
		t.Fatalf("defaults not applied: %+v", lr)
	}
	if vr.pod.Namespace != "web" || vr.pod.Name != "p" {
		t.Fatalf("pod info lost: %+v", vr.pod)
	}
	if _, kept := vr.attrs[keyServiceAccountTk]; kept {
		t.Fatal("the service account token must never be kept")
	}
}

func TestParseAttributesFull(t *testing.T) {
	vr, err := parseAttributes(map[string]string{
		"image": "oci:/srv/bytecode/x:v1", "program": "prog", "type": "xdp", "interface": "veth0",
		"priority": "50", "proceedOn": "pass, drop", "xdpMode": "skb", "maps": "a,b",
		"globals": "limit=2a000000,flag=01", "pullPolicy": "Never",
	})
	if err != nil {
		t.Fatal(err)
	}
	lr := vr.load
	if lr.Program != "prog" || lr.Hook != loader.HookXDP || lr.Priority != 50 || lr.XDPMode != "skb" {
		t.Fatalf("parsed %+v", lr)
	}
	if strings.Join(lr.ProceedOn, ",") != "pass,drop" || strings.Join(vr.maps, ",") != "a,b" {
		t.Fatalf("lists: %v %v", lr.ProceedOn, vr.maps)
	}
	if !bytes.Equal(lr.Globals["limit"], []byte{0x2a, 0, 0, 0}) || !bytes.Equal(lr.Globals["flag"], []byte{1}) {
		t.Fatalf("globals: %v", lr.Globals)
	}
}

func TestParseAttributesRejects(t *testing.T) {
	base := func(kv ...string) map[string]string {
		m := map[string]string{"image": "registry.example/x:1", "interface": "eth0"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	cases := []struct {
		attrs    map[string]string
		fragment string
	}{
		{map[string]string{"interface": "eth0"}, `"image" is required`},
		{map[string]string{"image": "x"}, `"interface" is required`},
		{base("bogus", "1"), "valid attributes: attachTo, direction, globals"},
		{base("Program", "x"), `did you mean "program"`},
		{base("priority", "1001"), "out of range"},
		{base("priority", "0"), "out of range"},
		{base("priority", "1e3"), "not a number"},
		{base("type", "tc"), `"direction" is required for type tc`},
		{base("type", "tc", "direction", "ingress", "proceedOn", "pass"), "not a tc action"},
		{base("type", "xdp", "proceedOn", "pipe"), "not a xdp action"},
		{base("globals", "=00"), "not a variable name"},
		{base("maps", ""), "empty entry"},
		{base("image", "has space"), "not an image reference"},
		{base("image", "oci:"), "absolute"},
		{base("interface", "eth 0"), "not an interface name"},
		{base("interface", "eth:0"), "not an interface name"},
		{base("csi.storage.k8s.io/pod.name", strings.Repeat("p", 5000)), "more than the 4096"},
		{base("program", "\xff"), "not valid UTF-8"},
		{base(keyPodNamespace, "web", kubeletPrefix+"x\x1b[31m", "1"), "not a kubelet key"},
		{base(keyPodNamespace, "web", kubeletPrefix+"\u0430", "1"), "not a kubelet key"},
		{base(keyPodNamespace, "web", kubeletPrefix+strings.Repeat("k", 200), "1"), "not a kubelet key"},
	}
	for _, c := range cases {
		_, err := parseAttributes(c.attrs)
		if err == nil || !strings.Contains(err.Error(), c.fragment) {
			t.Errorf("%v: got %v, want an error containing %q", c.attrs, err, c.fragment)
		}
		if err != nil && codeOf(err).String() != "InvalidArgument" {
			t.Errorf("%v: code %s, want InvalidArgument", c.attrs, codeOf(err))
		}
	}
}

// A request with any kubelet key is a pod's, and a pod's request names its
// namespace: half a pod's request must not pass as a local one.
func TestParseAttributesPodOrLocal(t *testing.T) {
	base := map[string]string{"image": "registry.example/x:1", "interface": "eth0"}
	with := func(kv ...string) map[string]string {
		m := maps.Clone(base)
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, c := range []struct {
		name    string
		attrs   map[string]string
		fromPod bool
		err     string
	}{
		{"local", base, false, ""},
		{"pod", with(keyPodName, "p", keyPodNamespace, "web"), true, ""},
		{"pod name, uid and ephemeral without namespace", with(keyPodName, "p", keyPodUID, "u", kubeletPrefix+"ephemeral", "true"), false, "no \"csi.storage.k8s.io/pod.namespace\""},
		{"empty namespace", with(keyPodName, "p", keyPodNamespace, ""), false, "must name its namespace"},
		{"only an unknown kubelet key", with(kubeletPrefix+"whatever", "x"), false, "must name its namespace"},
		{"only the tokens", with(keyServiceAccountTk, "{}"), false, "must name its namespace"},
	} {
		vr, err := parseAttributes(c.attrs)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || codeOf(err) != codes.InvalidArgument {
				t.Errorf("%s: got %v, want InvalidArgument containing %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if vr.fromPod != c.fromPod {
			t.Errorf("%s: fromPod = %v, want %v", c.name, vr.fromPod, c.fromPod)
		}
	}
}

// The volume context is bounded as a whole: in keys and in bytes.
func TestParseAttributesBounds(t *testing.T) {
	pod := func(extra int, valueLen int) map[string]string {
		m := map[string]string{"image": "registry.example/x:1", "interface": "eth0", keyPodNamespace: "web", keyPodName: "p"}
		for i := 0; i < extra; i++ {
			m[fmt.Sprintf("%sextra%d", kubeletPrefix, i)] = strings.Repeat("v", valueLen)
		}
		return m
	}
	if _, err := parseAttributes(pod(maxAttrs-4, 1)); err != nil {
		t.Fatalf("%d keys refused: %v", maxAttrs, err)
	}
	if _, err := parseAttributes(pod(maxAttrs-3, 1)); err == nil || !strings.Contains(err.Error(), "more than the 64 allowed") {
		t.Fatalf("%d keys: got %v", maxAttrs+1, err)
	}
	if _, err := parseAttributes(pod(1000, 1)); err == nil || codeOf(err) != codes.InvalidArgument {
		t.Fatalf("1000 keys: got %v", err)
	}
	// 5 values of 4000 bytes: each under the per-value bound, too many together.
	if _, err := parseAttributes(pod(5, 4000)); err == nil || !strings.Contains(err.Error(), "more than the 16384 allowed") {
		t.Fatalf("20 KB of values: got %v", err)
	}
	// The tokens do not count towards the total (they are never kept) but
	// have their own bound.
	tok := pod(0, 0)
	tok[keyServiceAccountTk] = strings.Repeat("t", 20<<10)
	if _, err := parseAttributes(tok); err != nil {
		t.Fatalf("20 KiB of tokens refused: %v", err)
	}
	tok[keyServiceAccountTk] = strings.Repeat("t", maxTokensLen+1)
	if _, err := parseAttributes(tok); err == nil || !strings.Contains(err.Error(), "serviceAccount.tokens") {
		t.Fatalf("oversized tokens: got %v", err)
	}
}

// FuzzParseAttributes: any attribute map is either rejected with a clean
// InvalidArgument or yields a request that satisfies the documented bounds.
func FuzzParseAttributes(f *testing.F) {
	f.Add("image", "oci:/srv/x:v1", "interface", "eth0", "priority", "50")
	f.Add("image", "registry.example/a/b@sha256:0123", "interface", "veth0", "globals", "x=00,y=0102")
	f.Add("image", "r/x", "interface", "lo", "proceedOn", "pass,dispatcher_return")
	f.Add("image", "r/x", "interface", "lo", "maps", "a,b,c")
	f.Add("image", "r/x", "interface", "\u0435th0", "type", "tcx")
	f.Add("image", "r/x", "cgroup", "/sys/fs/cgroup/a", "attachTo", "connect4")
	f.Add("image", "r/x", "type", "kprobe", "attachTo", "tcp_connect")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3 string) {
		vr, err := parseAttributes(map[string]string{k1: v1, k2: v2, k3: v3})
		if err != nil {
			if codeOf(err).String() != "InvalidArgument" {
				t.Fatalf("error %v has code %s", err, codeOf(err))
			}
			return
		}
		if vr.fromPod && vr.pod.Namespace == "" {
			t.Fatalf("accepted a pod request without a namespace: %+v", vr.pod)
		}
		for _, k := range []string{k1, k2, k3} {
			if strings.HasPrefix(k, kubeletPrefix) && !vr.fromPod {
				t.Fatalf("request with key %q taken as local", k)
			}
		}
		lr := vr.load
		tracing := loader.IsTracing(lr.Hook) || lr.Hook == "" && lr.AttachTo != ""
		onCgroup := lr.Cgroup != "" || vr.podCgroup
		if lr.Image.Reference == "" || lr.Interface == "" && !tracing && !onCgroup || len(lr.Interface) > 15 {
			t.Fatalf("accepted a request without image or with a bad interface: %+v", lr)
		}
		if lr.Cgroup != "" && (vr.fromPod || lr.Interface != "") || onCgroup && loader.IsTracing(lr.Hook) {
			t.Fatalf("accepted a cgroup a pod names, or with an interface or a tracing type: %+v", lr)
		}
		if loader.IsTracing(lr.Hook) && (lr.Interface != "" || lr.Priority != 0) {
			t.Fatalf("accepted network keys on a tracing request: %+v", lr)
		}
		if lr.Priority != 0 && (lr.Priority < 1 || lr.Priority > 1000) {
			t.Fatalf("accepted priority %d", lr.Priority)
		}
		for _, m := range vr.maps {
			if strings.ContainsAny(m, "/.\x00") {
				t.Fatalf("accepted map name %q", m)
			}
		}
	})
}

func BenchmarkParseAttributes(b *testing.B) {
	attrs := map[string]string{
		"image":     "registry.example/bpf/xdp-counter@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"interface": "eth0", "priority": "50", "proceedOn": "pass,dispatcher_return", "maps": "xdp_stats_map",
		keyPodName: "reader", keyPodNamespace: "net-observability", keyPodUID: "0b4e6f2a-1111-2222-3333-444455556666",
		keyServiceAccount: "default", kubeletPrefix + "ephemeral": "true",
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseAttributes(attrs); err != nil {
			b.Fatal(err)
		}
	}
}
