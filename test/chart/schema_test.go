package chart

import (
	"strings"
	"testing"
)

// TestSchemaRejects checks that values.schema.json stops bad values before
// anything is rendered, with a message naming the offending key.
func TestSchemaRejects(t *testing.T) {
	cases := []struct {
		name, values, want string
	}{
		{"unknown top-level key", "kubeletRoot: /var/lib/kubelet", "kubeletRoot"},
		{"misspelled nested key", "image: {repo: x}", "repo"},
		{"relative kubeletRootDir", "kubeletRootDir: var/lib/kubelet", "kubeletRootDir"},
		{"kubeletRootDir with trailing slash", "kubeletRootDir: /var/lib/kubelet/", "kubeletRootDir"},
		{"kubeletRootDir with ..", "kubeletRootDir: /var/lib/../kubelet", "kubeletRootDir"},
		{"kubeletRootDir not a string", "kubeletRootDir: 5", "kubeletRootDir"},
		{"logLevel 11", "logLevel: 11", "logLevel"},
		{"logLevel negative", "logLevel: -1", "logLevel"},
		{"logLevel not an integer", "logLevel: 2.5", "logLevel"},
		{"logLevel as a string", `logLevel: "2"`, "logLevel"},
		{"pullPolicy", "image: {pullPolicy: Sometimes}", "pullPolicy"},
		{"empty repository", `image: {repository: ""}`, "repository"},
		{"bad digest", "image: {digest: latest}", "digest"},
		{"health port out of range", "health: {port: 70000}", "port"},
		{"metrics.enabled as a string", `metrics: {enabled: "yes"}`, "enabled"},
		{"podMonitor interval", "metrics: {podMonitor: {interval: fast}}", "interval"},
		{"policy rule without images", "policy: {rules: [{name: a, namespaces: [x]}]}", "images"},
		{"policy rule with unknown field", "policy: {rules: [{name: a, namespaces: [x], images: [r.example/x], image: z}]}", "image"},
		{"policy rule named local", "policy: {rules: [{name: local, namespaces: [x], images: [r.example/x]}]}", "name"},
		{"policy empty namespaces", "policy: {rules: [{name: a, namespaces: [], images: [r.example/x]}]}", "namespaces"},
		{"policy unknown hook", "policy: {rules: [{name: a, namespaces: [x], images: [r.example/x], hooks: [kprobes]}]}", "hooks"},
		{"policy priority out of range", "policy: {rules: [{name: a, namespaces: [x], images: [r.example/x], priorities: {min: 0}}]}", "min"},
		{"policy local with namespaces", "policy: {rules: [], local: {namespaces: [x]}}", "namespaces"},
		{"policy rules not a list", "policy: {rules: {name: a}}", "rules"},
		{"keepAttached not a duration", "policy: {rules: [], keepAttached: {max: soon}}", "max"},
		{"program name not a DNS label", "programs: [{name: Fw, attributes: {image: r.example/x}}]", "name"},
		{"program without image", "programs: [{name: fw, attributes: {interface: eth0}}]", "image"},
		{"localBytecodeDir relative", "localBytecodeDir: bytecode", "localBytecodeDir"},
		{"toleration typo", "tolerations: [{operater: Exists}]", "operater"},
		{"resources typo", "resources: {request: {cpu: 1m}}", "request"},
		{"resource quantity as a boolean", "resources: {requests: {cpu: true}}", "cpu"},
		{"extraArgs not flags", "extraArgs: [serve]", "extraArgs"},
		{"criEvents unknown", "criEvents: sometimes", "criEvents"},
		{"criEvents unquoted on", "criEvents: on", "criEvents"},
		{"updateStrategy type", "updateStrategy: {type: Recreate}", "type"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := renderValues(t, tc.values)
			if err == nil {
				t.Fatalf("values %q rendered; want a schema error", tc.values)
			}
			msg := err.Error()
			if !strings.Contains(msg, "values don't meet the specifications of the schema") {
				t.Fatalf("values %q: error is not a schema error: %v", tc.values, err)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("values %q: error does not name %q: %v", tc.values, tc.want, err)
			}
		})
	}
}

// TestSchemaAccepts checks values that must stay valid.
func TestSchemaAccepts(t *testing.T) {
	for _, values := range []string{
		"",
		"global: {imageRegistry: registry.example}",
		"image: {repository: 'localhost:5000/bpfmount', tag: v1.2.3-rc.1}",
		"updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 10%}}",
		"updateStrategy: {type: OnDelete}",
		"tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]",
		"resources: {requests: {cpu: 0.5, memory: 64Mi}}",
		"policy: {rules: [], local: {images: ['oci:/srv/**'], priorities: {max: 10}}}",
		"policy: {rules: [{name: mon, namespaces: [mon], names: ['fw-*'], fromWritable: true}], keepAttached: {default: 0s, max: 5m}}",
		"programs: [{name: node-counter, attributes: {image: registry.example/bpf/xdp-counter:v1, interface: eth0, priority: 10}}]",
		"logLevel: 0",
		"logLevel: 10",
		// Every hook the driver's policy knows.
		"policy: {rules: [{name: a, namespaces: [x], images: [r.example/x], hooks: [xdp, tc, tcx, tracepoint, kprobe, kretprobe, uprobe, uretprobe, fentry, fexit, cgroup_skb, cgroup_sock_addr, sock_ops]}]}",
	} {
		if _, err := renderValues(t, values); err != nil {
			t.Errorf("values %q: %v", values, err)
		}
	}
}
