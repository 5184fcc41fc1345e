package driver

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/loader"
)

func TestParseAttributesTracing(t *testing.T) {
	for _, c := range []struct {
		typ, attachTo string
	}{
		{"tracepoint", "sched/sched_process_exec"},
		{"kprobe", "tcp_connect+0x10"},
		{"kretprobe", "tcp_connect"},
		{"fentry", "tcp_connect"},
		{"fexit", "do_unlinkat"},
		{"uprobe", "/usr/bin/bash:readline"},
		{"uprobe", "/usr/lib/x86_64-linux-gnu/libc.so.6:malloc+4"},
		{"uretprobe", "/bin/app:0x4a1f0"},
		{"uprobe", "/bin/app:main.(*Server).Serve"},
	} {
		vr, err := parseAttributes(map[string]string{"image": "registry.example/bpf/t:v1", "type": c.typ, "attachTo": c.attachTo})
		if err != nil {
			t.Errorf("%s %s: %v", c.typ, c.attachTo, err)
			continue
		}
		if vr.load.Hook != loader.Hook(c.typ) || vr.load.AttachTo != c.attachTo || vr.load.Interface != "" || vr.load.Priority != 0 {
			t.Errorf("%s %s: request %+v", c.typ, c.attachTo, vr.load)
		}
	}
	// No type: the labels decide; attachTo alone stands for the interface.
	vr, err := parseAttributes(map[string]string{"image": "registry.example/bpf/t:v1", "attachTo": "sched/sched_switch"})
	if err != nil || vr.load.AttachTo != "sched/sched_switch" || vr.load.Hook != "" {
		t.Fatalf("no type with attachTo: %v %+v", err, vr)
	}
}

func TestParseAttributesTracingRejects(t *testing.T) {
	base := func(typ, attachTo string, kv ...string) map[string]string {
		m := map[string]string{"image": "registry.example/bpf/t:v1", "type": typ, "attachTo": attachTo}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, c := range []struct {
		attrs    map[string]string
		fragment string
	}{
		{base("tracepoint", "sched/x", "interface", "eth0"), `"interface" does not apply to type tracepoint`},
		{base("kprobe", "f", "priority", "5"), `"priority" does not apply to type kprobe`},
		{base("uprobe", "/b:s", "proceedOn", "pass"), `"proceedOn" does not apply to type uprobe`},
		{base("fentry", "f", "direction", "ingress"), `"direction" does not apply to type fentry`},
		{base("fexit", "f", "xdpMode", "skb"), `"xdpMode" does not apply to type fexit`},
		{base("tracepoint", "sched"), "GROUP/NAME"},
		{base("tracepoint", "sched/../x"), "GROUP/NAME"},
		{base("kprobe", "f+zz"), "not a number"},
		{base("kretprobe", "f+4"), "offset applies to kprobe only"},
		{base("fentry", "f+4"), "offset applies to kprobe only"},
		{base("kprobe", "f; rm"), "kernel function"},
		{base("uprobe", "bash:readline"), "absolute path"},
		{base("uprobe", "/usr/../bin/bash:readline"), "absolute path"},
		{base("uprobe", "/usr/bin/bash"), "PATH:SYMBOL"},
		{base("uprobe", "/usr/bin/bash:0xzz"), "not a non-zero hex number"},
		{base("uprobe", "/usr/bin/bash:read line"), "not a symbol name"},
		{map[string]string{"image": "x", "type": "kprobe"}, "type kprobe needs attachTo"},
		{map[string]string{"image": "x", "type": "xdp", "interface": "eth0", "attachTo": "a/b"}, `"attachTo" applies to tracing types`},
		{map[string]string{"image": "x", "type": "tcx", "direction": "ingress", "attachTo": "a/b"}, `"interface" is required`},
		{map[string]string{"image": "x", "type": "tracepoint", "attachTo": strings.Repeat("a", 1100)}, "more than the 1024"},
		{map[string]string{"image": "x", "type": "raw_tracepoint", "attachTo": "a"}, "not a supported type"},
	} {
		_, err := parseAttributes(c.attrs)
		if err == nil || !strings.Contains(err.Error(), c.fragment) || codeOf(err) != codes.InvalidArgument {
			t.Errorf("%v: got %v, want InvalidArgument containing %q", c.attrs, err, c.fragment)
		}
	}
}
