package driver

import (
	"bytes"
	"strings"
	"testing"

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
	if lr.Priority != loader.DefaultPriority || lr.Image.Policy != "IfNotPresent" || lr.Hook != "" || vr.maps != nil {
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
		{base("bogus", "1"), "valid attributes: direction, globals"},
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

// FuzzParseAttributes: any attribute map is either rejected with a clean
// InvalidArgument or yields a request that satisfies the documented bounds.
func FuzzParseAttributes(f *testing.F) {
	f.Add("image", "oci:/srv/x:v1", "interface", "eth0", "priority", "50")
	f.Add("image", "registry.example/a/b@sha256:0123", "interface", "veth0", "globals", "x=00,y=0102")
	f.Add("image", "r/x", "interface", "lo", "proceedOn", "pass,dispatcher_return")
	f.Add("image", "r/x", "interface", "lo", "maps", "a,b,c")
	f.Add("image", "r/x", "interface", "\u0435th0", "type", "tcx")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3 string) {
		vr, err := parseAttributes(map[string]string{k1: v1, k2: v2, k3: v3})
		if err != nil {
			if codeOf(err).String() != "InvalidArgument" {
				t.Fatalf("error %v has code %s", err, codeOf(err))
			}
			return
		}
		lr := vr.load
		if lr.Image.Reference == "" || lr.Interface == "" || len(lr.Interface) > 15 {
			t.Fatalf("accepted a request without image or with a bad interface: %+v", lr)
		}
		if lr.Priority < 1 || lr.Priority > 1000 {
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
		keyServiceAccount: "default", keyEphemeral: "true",
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseAttributes(attrs); err != nil {
			b.Fatal(err)
		}
	}
}
