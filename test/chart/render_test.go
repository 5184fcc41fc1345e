package chart

import (
	"cmp"
	"fmt"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/test/chart/render"
)

// policyCase is a publish request and whether the rendered policy must
// allow it.
type policyCase struct {
	req   policy.Request
	allow bool
}

// scenario is one set of values and what the render must contain.
type scenario struct {
	name          string
	values        string
	root          string // kubeletRootDir the paths must derive from
	fullname      string
	metrics       bool
	noStats       bool   // programStats: false
	criEvents     string // --cri-events; "" for the default, auto
	service       bool
	podMonitor    bool
	saCreate      bool
	saName        string
	rbac          bool
	image         string
	logLevel      int
	healthPort    int
	metricsPort   int
	localBytecode string // "" when not mounted
	priorityClass string
	extraArgs     []string
	resources     corev1.ResourceRequirements
	policy        []policyCase
	notes         []string // substrings NOTES.txt must contain
}

// exampleRequest is the request the xdp-counter example pod makes.
func exampleRequest() policy.Request {
	return policy.Request{
		Namespace: "bpfmount-examples", ServiceAccount: "default", Pod: "xdp-counter",
		Image: "registry.example/bpf/xdp-counter:v1", Interface: "eth0", Hook: "xdp",
		Priority: 1000, ReadOnly: true,
	}
}

func with(r policy.Request, f func(*policy.Request)) policy.Request { f(&r); return r }

var defaultResources = corev1.ResourceRequirements{
	Requests: corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("10m"),
		corev1.ResourceMemory: resource.MustParse("32Mi"),
	},
	Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
}

var scenarios = []scenario{
	{
		name:          "defaults",
		values:        "",
		root:          "/var/lib/kubelet",
		fullname:      "bpfmount",
		saCreate:      true,
		saName:        "bpfmount",
		rbac:          true,
		image:         "bpfmount/bpfmount:0.1.0",
		logLevel:      2,
		healthPort:    9818,
		localBytecode: "/var/lib/bpfmount/bytecode",
		priorityClass: "system-node-critical",
		resources:     defaultResources,
		policy: []policyCase{
			{exampleRequest(), true},
			{with(exampleRequest(), func(r *policy.Request) { r.Hook = "tcx" }), true},
			{with(exampleRequest(), func(r *policy.Request) { r.Image = "registry.example/bpf/private/xdp-counter:v1" }), true},
			{with(exampleRequest(), func(r *policy.Request) { r.Image = "oci:/var/lib/bpfmount/bytecode/xdp-counter:v1" }), true},
			{with(exampleRequest(), func(r *policy.Request) { r.Interface = "ens5" }), true},
			// Read-write volumes, other namespaces, other registries: denied.
			{with(exampleRequest(), func(r *policy.Request) { r.ReadOnly = false }), false},
			{with(exampleRequest(), func(r *policy.Request) { r.Namespace = "default" }), false},
			{with(exampleRequest(), func(r *policy.Request) { r.Image = "registry.example/other/xdp:v1" }), false},
			{with(exampleRequest(), func(r *policy.Request) { r.Image = "oci:/srv/bytecode/x" }), false},
			// The CLI on the node: allowed (no local section).
			{policy.Request{Local: true, Image: "oci:/srv/x", Interface: "lo", Hook: "xdp", Priority: 1}, true},
		},
		notes: []string{"kubectl get csinode", "deploy/examples/xdp-counter-pod.yaml", "bpfmount/bpfmount-policy", "/var/lib/kubelet"},
	},
	{
		name: "k3s-metrics-custom",
		values: `
kubeletRootDir: /var/lib/rancher/k3s/agent/kubelet
fullnameOverride: ebpf-csi
image:
  repository: registry.example/mirror/bpfmount
  tag: v9.9.9
  pullPolicy: Always
logLevel: 5
health:
  port: 19808
metrics:
  enabled: true
  port: 19809
  service:
    enabled: true
  podMonitor:
    enabled: true
    interval: 15s
    labels:
      release: prometheus
localBytecodeDir: ""
priorityClassName: ""
programStats: false
criEvents: "on"
extraArgs: ["--policy-reload-interval=10s"]
resources:
  requests:
    cpu: 1
    memory: 64Mi
  limits:
    cpu: 2
    memory: 1Gi
policy:
  rules:
    - name: observability
      namespaces: ["monitoring", "net-*", "no"]
      serviceAccounts: ["collector"]
      images: ["registry.example/bpf/*"]
      requireDigest: true
      interfaces: ["eth*"]
      hooks: ["xdp", "tcx"]
      priorities: {min: 10, max: 500}
    - name: lab
      namespaces: ["lab"]
      images: ["oci:/srv/bytecode/**"]
  local:
    images: ["registry.example/bpf/**"]
    hooks: ["xdp"]
`,
		root:        "/var/lib/rancher/k3s/agent/kubelet",
		fullname:    "ebpf-csi",
		metrics:     true,
		noStats:     true,
		criEvents:   "on",
		service:     true,
		podMonitor:  true,
		saCreate:    true,
		saName:      "ebpf-csi",
		rbac:        true,
		image:       "registry.example/mirror/bpfmount:v9.9.9",
		logLevel:    5,
		healthPort:  19808,
		metricsPort: 19809,
		extraArgs:   []string{"--policy-reload-interval=10s"},
		resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("1"),
				corev1.ResourceMemory: resource.MustParse("64Mi"),
			},
			Limits: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("2"),
				corev1.ResourceMemory: resource.MustParse("1Gi"),
			},
		},
		policy: func() []policyCase {
			obs := policy.Request{
				Namespace: "net-edge", ServiceAccount: "collector", Pod: "p",
				Image: "registry.example/bpf/counter@sha256:" + strings.Repeat("ab", 32), Interface: "eth1", Hook: "tcx",
				Priority: 100,
			}
			return []policyCase{
				{obs, true},
				// The namespace named "no" stayed a string through the values.
				{with(obs, func(r *policy.Request) { r.Namespace = "no" }), true},
				{with(obs, func(r *policy.Request) { r.Image = "registry.example/bpf/counter:v1" }), false}, // requireDigest
				{with(obs, func(r *policy.Request) { r.ServiceAccount = "default" }), false},
				{with(obs, func(r *policy.Request) { r.Interface = "wlan0" }), false},
				{with(obs, func(r *policy.Request) { r.Hook = "tc" }), false},
				{with(obs, func(r *policy.Request) { r.Priority = 600 }), false},
				{policy.Request{Namespace: "lab", Pod: "p", Image: "oci:/srv/bytecode/a/b:v1", Interface: "eth0", Hook: "xdp", Priority: 1000}, true},
				{policy.Request{Namespace: "bpfmount-examples", Pod: "p", Image: "registry.example/bpf/xdp-counter:v1", Interface: "eth0", Hook: "xdp", Priority: 1000, ReadOnly: true}, false},
				{policy.Request{Local: true, Image: "registry.example/bpf/a:v1", Interface: "lo", Hook: "xdp", Priority: 1}, true},
				{policy.Request{Local: true, Image: "registry.example/bpf/a:v1", Interface: "lo", Hook: "tcx", Priority: 1}, false},
				{policy.Request{Local: true, Image: "oci:/srv/x", Interface: "lo", Hook: "xdp", Priority: 1}, false},
			}
		}(),
		notes: []string{"ebpf-csi-policy", "/var/lib/rancher/k3s/agent/kubelet", `"observability" for namespaces monitoring, net-*, no`, `"lab" for namespaces lab`},
	},
	{
		name: "microk8s-no-rbac-no-rules",
		values: `
kubeletRootDir: /var/snap/microk8s/common/var/lib/kubelet
image:
  digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
serviceAccount:
  create: false
  name: existing-sa
rbac:
  create: false
tolerations: []
policy:
  rules: []
`,
		root:          "/var/snap/microk8s/common/var/lib/kubelet",
		fullname:      "bpfmount",
		saName:        "existing-sa",
		image:         "bpfmount/bpfmount@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		logLevel:      2,
		healthPort:    9818,
		localBytecode: "/var/lib/bpfmount/bytecode",
		priorityClass: "system-node-critical",
		resources:     defaultResources,
		policy: []policyCase{
			{exampleRequest(), false},
			{policy.Request{Local: true, Image: "oci:/srv/x", Interface: "lo", Hook: "xdp", Priority: 1}, true},
		},
		notes: []string{"none: no pod may load programs"},
	},
}

func TestRender(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			res, err := renderValues(t, sc.values)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			objs := decodeRendered(t, res)
			checkObjects(t, sc, objs)
			checkCSIDriver(t, one[*storagev1.CSIDriver](t, objs))
			ds := one[*appsv1.DaemonSet](t, objs)
			checkDaemonSet(t, sc, ds)
			checkMounts(t, sc, ds)
			checkRBAC(t, sc, objs, ds)
			checkPolicy(t, sc, objs, ds)
			checkMetrics(t, sc, objs, ds)
			for _, s := range sc.notes {
				if !strings.Contains(res.Notes, s) {
					t.Errorf("NOTES.txt does not mention %q:\n%s", s, res.Notes)
				}
			}
		})
	}
}

// checkObjects checks what every object must satisfy: valid names and
// labels, the release namespace on namespaced objects and none on
// cluster-scoped ones, and the expected set of kinds.
func checkObjects(t *testing.T, sc scenario, objs []decoded) {
	t.Helper()
	clusterScoped := map[string]bool{"CSIDriver": true, "ClusterRole": true, "ClusterRoleBinding": true}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.Kind)
		meta := o.Obj.(metav1.Object)
		for _, msg := range validation.IsDNS1123Subdomain(meta.GetName()) {
			t.Errorf("%s %q: bad name: %s", o.Kind, meta.GetName(), msg)
		}
		if clusterScoped[o.Kind] {
			if meta.GetNamespace() != "" {
				t.Errorf("cluster-scoped %s %q has namespace %q", o.Kind, meta.GetName(), meta.GetNamespace())
			}
		} else if meta.GetNamespace() != releaseNS {
			t.Errorf("%s %q: namespace %q, want the release namespace %q", o.Kind, meta.GetName(), meta.GetNamespace(), releaseNS)
		}
		checkLabels(t, o.Kind+" "+meta.GetName(), meta.GetLabels())
		if meta.GetLabels()["app.kubernetes.io/name"] != "bpfmount" {
			t.Errorf("%s %q: no app.kubernetes.io/name label", o.Kind, meta.GetName())
		}
	}
	want := []string{"ConfigMap", "ConfigMap", "CSIDriver", "DaemonSet"} // the policy and the node programs
	if sc.saCreate {
		want = append(want, "ServiceAccount")
	}
	if sc.rbac {
		want = append(want, "ClusterRole", "ClusterRoleBinding")
	}
	if sc.service {
		want = append(want, "Service")
	}
	if sc.podMonitor {
		want = append(want, "PodMonitor")
	}
	slices.Sort(want)
	slices.Sort(kinds)
	if !slices.Equal(kinds, want) {
		t.Errorf("rendered kinds %v, want %v", kinds, want)
	}
}

func checkLabels(t *testing.T, what string, l map[string]string) {
	t.Helper()
	for k, v := range l {
		for _, msg := range validation.IsQualifiedName(k) {
			t.Errorf("%s: label key %q: %s", what, k, msg)
		}
		for _, msg := range validation.IsValidLabelValue(v) {
			t.Errorf("%s: label %s value %q: %s", what, k, v, msg)
		}
	}
}

func checkCSIDriver(t *testing.T, d *storagev1.CSIDriver) {
	t.Helper()
	if d.Name != driverName {
		t.Errorf("CSIDriver name %q, want %q", d.Name, driverName)
	}
	s := d.Spec
	check := func(field string, got *bool, want bool) {
		if got == nil || *got != want {
			t.Errorf("CSIDriver %s = %v, want %v", field, ptrString(got), want)
		}
	}
	check("attachRequired", s.AttachRequired, false)
	check("podInfoOnMount", s.PodInfoOnMount, true)
	check("requiresRepublish", s.RequiresRepublish, false)
	if !slices.Equal(s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral}) {
		t.Errorf("CSIDriver volumeLifecycleModes = %v, want [Ephemeral]", s.VolumeLifecycleModes)
	}
	if s.FSGroupPolicy == nil || *s.FSGroupPolicy != storagev1.FileFSGroupPolicy {
		t.Errorf("CSIDriver fsGroupPolicy = %v, want File", ptrString(s.FSGroupPolicy))
	}
	if len(s.TokenRequests) != 0 {
		t.Errorf("CSIDriver requests service account tokens: %v", s.TokenRequests)
	}
}

func ptrString[T any](p *T) string {
	if p == nil {
		return "<unset>"
	}
	return fmt.Sprint(*p)
}

// flags parses the container's args into flag name -> value; bare
// arguments (the subcommand) are returned separately.
func flags(t *testing.T, args []string) (map[string]string, []string) {
	t.Helper()
	m := map[string]string{}
	var bare []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			bare = append(bare, a)
			continue
		}
		k, v, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !ok {
			t.Errorf("flag %q has no =value", a)
		}
		if _, dup := m[k]; dup {
			t.Errorf("flag --%s given twice", k)
		}
		m[k] = v
	}
	return m, bare
}

func checkDaemonSet(t *testing.T, sc scenario, ds *appsv1.DaemonSet) {
	t.Helper()
	if ds.Name != sc.fullname {
		t.Errorf("DaemonSet name %q, want %q", ds.Name, sc.fullname)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("DaemonSet selector %v does not select its pod template labels %v (err %v)", ds.Spec.Selector, ds.Spec.Template.Labels, err)
	}
	checkLabels(t, "pod template", ds.Spec.Template.Labels)
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxUnavailable == nil || us.RollingUpdate.MaxUnavailable.String() != "1" {
		t.Errorf("updateStrategy = %+v, want RollingUpdate with maxUnavailable 1", us)
	}

	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork {
		t.Error("hostNetwork is not set: the driver attaches to host interfaces")
	}
	if !pod.HostPID {
		t.Error("hostPID is not set: a container's uprobe is attached through the container's main process, named by its pid on the node")
	}
	if pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy = %q, want ClusterFirstWithHostNet", pod.DNSPolicy)
	}
	if pod.PriorityClassName != sc.priorityClass {
		t.Errorf("priorityClassName = %q, want %q", pod.PriorityClassName, sc.priorityClass)
	}
	if pod.TerminationGracePeriodSeconds == nil || *pod.TerminationGracePeriodSeconds != 30 {
		t.Errorf("terminationGracePeriodSeconds = %v, want 30", ptrString(pod.TerminationGracePeriodSeconds))
	}
	if pod.SecurityContext == nil || pod.SecurityContext.SeccompProfile == nil ||
		pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod seccompProfile is not RuntimeDefault")
	}
	if pod.NodeSelector["kubernetes.io/os"] != "linux" {
		t.Errorf("nodeSelector = %v, want kubernetes.io/os: linux", pod.NodeSelector)
	}
	if sc.name == "defaults" {
		if len(pod.Tolerations) != 1 || pod.Tolerations[0].Operator != corev1.TolerationOpExists || pod.Tolerations[0].Key != "" {
			t.Errorf("tolerations = %+v, want [{operator: Exists}]", pod.Tolerations)
		}
	}
	if pod.ServiceAccountName != sc.saName {
		t.Errorf("serviceAccountName = %q, want %q", pod.ServiceAccountName, sc.saName)
	}
	if len(pod.InitContainers) != 0 || len(pod.Containers) != 1 {
		t.Fatalf("want one container and no init containers (no sidecars), got %d and %d", len(pod.Containers), len(pod.InitContainers))
	}
	c := pod.Containers[0]
	if c.Name != "bpfmount" {
		t.Errorf("container name %q, want bpfmount", c.Name)
	}
	if c.Image != sc.image {
		t.Errorf("image %q, want %q", c.Image, sc.image)
	}
	if !slices.Equal(c.Command, []string{"/bpfmount"}) {
		t.Errorf("command %q, want [/bpfmount]", c.Command)
	}
	sec := c.SecurityContext
	if sec == nil || sec.Privileged == nil || !*sec.Privileged {
		t.Error("container is not privileged")
	} else if sec.AllowPrivilegeEscalation != nil && !*sec.AllowPrivilegeEscalation {
		t.Error("privileged with allowPrivilegeEscalation false: the API server rejects that")
	}
	if !equalResources(c.Resources, sc.resources) {
		t.Errorf("resources = %+v, want %+v", c.Resources, sc.resources)
	}

	// Flags.
	f, bare := flags(t, c.Args)
	if !slices.Equal(bare, []string{"serve"}) {
		t.Errorf("subcommand args %q, want [serve]", bare)
	}
	pluginDir := sc.root + "/plugins/" + driverName
	want := map[string]string{
		"endpoint":                  "unix:///csi/csi.sock",
		"node-id":                   "$(KUBE_NODE_NAME)",
		"state-dir":                 "/run/bpfmount",
		"bpffs-root":                "/sys/fs/bpf/bpfmount",
		"image-cache":               "/var/cache/bpfmount",
		"policy":                    "/etc/bpfmount/policy.yaml",
		"programs":                  "/etc/bpfmount-programs/programs.yaml",
		"kubelet-registration-path": pluginDir + "/csi.sock",
		"registration-socket":       "/registration/" + driverName + "-reg.sock",
		"target-root":               sc.root + "/pods", // volumes only below kubelet's pods directory
		"health-address":            ":" + strconv.Itoa(sc.healthPort),
		"v":                         strconv.Itoa(sc.logLevel),
		"program-stats":             strconv.FormatBool(!sc.noStats),
		"cgroup-root":               "/host/sys/fs/cgroup", // the host's tree, read-only
		"kubelet-cgroup-root":       "/",
		"cri-endpoint":              "unix:///host/cri/containerd.sock", // the runtime's socket, in its mounted directory
		"cri-events":                cmp.Or(sc.criEvents, "auto"),
	}
	if sc.metrics {
		want["metrics-address"] = ":" + strconv.Itoa(sc.metricsPort)
	}
	if pod.TerminationGracePeriodSeconds != nil {
		want["shutdown-grace"] = shutdownGrace(*pod.TerminationGracePeriodSeconds)
	}
	for _, a := range sc.extraArgs {
		k, v, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		want[k] = v
	}
	if !maps.Equal(f, want) {
		t.Errorf("flags:\n got %v\nwant %v", f, want)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if e := env["BPFMOUNT_ENDPOINT"]; e.Value != want["endpoint"] {
		t.Errorf("BPFMOUNT_ENDPOINT env = %+v, want %q (the --endpoint serve gets, for `bpfmount list` in the container)", e, want["endpoint"])
	}
	if e := env["KUBE_NODE_NAME"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("KUBE_NODE_NAME env = %+v, want fieldRef spec.nodeName", e)
	}

	// Probes: /healthz on the named port the health flag serves.
	ports := map[string]corev1.ContainerPort{}
	for _, p := range c.Ports {
		if msgs := validation.IsValidPortName(p.Name); len(msgs) > 0 {
			t.Errorf("port name %q: %v", p.Name, msgs)
		}
		ports[p.Name] = p
	}
	if p, ok := ports["healthz"]; !ok || int(p.ContainerPort) != sc.healthPort {
		t.Errorf("healthz port = %+v, want %d", p, sc.healthPort)
	}
	for name, pr := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "startup": c.StartupProbe} {
		if pr == nil || pr.HTTPGet == nil {
			t.Errorf("no %s httpGet probe", name)
			continue
		}
		if pr.HTTPGet.Path != "/healthz" || pr.HTTPGet.Port.String() != "healthz" {
			t.Errorf("%s probe = %s on port %s, want /healthz on healthz", name, pr.HTTPGet.Path, pr.HTTPGet.Port.String())
		}
		// The handler answers within 2 s; the probe must wait longer.
		if pr.TimeoutSeconds < 3 {
			t.Errorf("%s probe timeout %ds is shorter than the handler's 2 s budget plus slack", name, pr.TimeoutSeconds)
		}
	}
	if _, ok := ports["metrics"]; ok != sc.metrics {
		t.Errorf("metrics port present = %v, want %v", ok, sc.metrics)
	}
}

func equalResources(a, b corev1.ResourceRequirements) bool {
	eq := func(x, y corev1.ResourceList) bool {
		if len(x) != len(y) {
			return false
		}
		for k, q := range x {
			if r, ok := y[k]; !ok || q.Cmp(r) != 0 {
				return false
			}
		}
		return true
	}
	return eq(a.Requests, b.Requests) && eq(a.Limits, b.Limits)
}

// isUnder reports whether p is dir or inside it.
func isUnder(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

func checkMounts(t *testing.T, sc scenario, ds *appsv1.DaemonSet) {
	t.Helper()
	pod := ds.Spec.Template.Spec
	c := pod.Containers[0]
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		if _, dup := vols[v.Name]; dup {
			t.Errorf("volume %q defined twice", v.Name)
		}
		vols[v.Name] = v
	}
	mountOf := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			t.Errorf("volumeMount %q names no volume", m.Name)
			continue
		}
		if _, dup := mountOf[m.Name]; dup {
			t.Errorf("volume %q mounted twice", m.Name)
		}
		mountOf[m.Name] = m
		if m.SubPath != "" || m.SubPathExpr != "" {
			t.Errorf("mount %q uses subPath: kubelet does not update subPath mounts", m.Name)
		}
		if !path.IsAbs(m.MountPath) || path.Clean(m.MountPath) != m.MountPath {
			t.Errorf("mount %q: mountPath %q is not absolute and clean", m.Name, m.MountPath)
		}
		_ = v
	}
	for name := range vols {
		if _, ok := mountOf[name]; !ok {
			t.Errorf("volume %q is not mounted", name)
		}
	}

	// The expected hostPath volumes, all derived from kubeletRootDir where
	// they are kubelet's.
	type hp struct {
		host, mount string
		typ         corev1.HostPathType
		prop        corev1.MountPropagationMode // "" = none
		readOnly    bool
	}
	want := map[string]hp{
		"plugin-dir":       {sc.root + "/plugins/" + driverName, "/csi", corev1.HostPathDirectoryOrCreate, "", false},
		"registration-dir": {sc.root + "/plugins_registry", "/registration", corev1.HostPathDirectory, "", false},
		"pods-dir":         {sc.root + "/pods", sc.root + "/pods", corev1.HostPathDirectory, corev1.MountPropagationBidirectional, false},
		"bpffs":            {"/sys/fs/bpf", "/sys/fs/bpf", corev1.HostPathDirectory, corev1.MountPropagationBidirectional, false},
		"state-dir":        {"/run/bpfmount", "/run/bpfmount", corev1.HostPathDirectoryOrCreate, corev1.MountPropagationBidirectional, false},
		"image-cache":      {"/var/cache/bpfmount", "/var/cache/bpfmount", corev1.HostPathDirectoryOrCreate, "", false},
		"cgroup-root":      {"/sys/fs/cgroup", "/host/sys/fs/cgroup", corev1.HostPathDirectory, "", true},
		// interface: pod: the runtime's socket directory, and pods'
		// network namespaces at both paths runtimes name them by.
		"cri-dir":       {"/run/containerd", "/host/cri", corev1.HostPathDirectoryOrCreate, corev1.MountPropagationHostToContainer, true},
		"netns-dir":     {"/run/netns", "/run/netns", corev1.HostPathDirectoryOrCreate, corev1.MountPropagationHostToContainer, true},
		"netns-dir-var": {"/run/netns", "/var/run/netns", corev1.HostPathDirectoryOrCreate, corev1.MountPropagationHostToContainer, true},
	}
	if sc.localBytecode != "" {
		want["local-bytecode"] = hp{sc.localBytecode, sc.localBytecode, corev1.HostPathDirectoryOrCreate, "", true}
	}
	var hostPaths []string
	for name, v := range vols {
		if v.HostPath == nil {
			continue
		}
		hostPaths = append(hostPaths, v.HostPath.Path)
		w, ok := want[name]
		if !ok {
			t.Errorf("unexpected hostPath volume %q (%s)", name, v.HostPath.Path)
			continue
		}
		m := mountOf[name]
		var prop corev1.MountPropagationMode
		if m.MountPropagation != nil {
			prop = *m.MountPropagation
		}
		if prop == corev1.MountPropagationNone {
			prop = ""
		}
		if v.HostPath.Path != w.host || m.MountPath != w.mount || v.HostPath.Type == nil || *v.HostPath.Type != w.typ ||
			prop != w.prop || m.ReadOnly != w.readOnly {
			t.Errorf("hostPath volume %q: %s (%s) at %s, propagation %q, readOnly %v; want %s (%s) at %s, propagation %q, readOnly %v",
				name, v.HostPath.Path, ptrString(v.HostPath.Type), m.MountPath, prop, m.ReadOnly, w.host, w.typ, w.mount, w.prop, w.readOnly)
		}
		delete(want, name)
	}
	for name := range want {
		t.Errorf("missing hostPath volume %q", name)
	}
	if sc.root != "/var/lib/kubelet" {
		for _, p := range hostPaths {
			if isUnder(p, "/var/lib/kubelet") {
				t.Errorf("hostPath %s ignores kubeletRootDir %s", p, sc.root)
			}
		}
	}

	// Bidirectional propagation: only on the three directories, only with
	// a privileged container, and never on a parent of another hostPath
	// (the propagated mounts would multiply) nor inside another one.
	var bidir []string
	for _, m := range c.VolumeMounts {
		if m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
			continue
		}
		v := vols[m.Name]
		if v.HostPath == nil {
			t.Errorf("Bidirectional mount %q is not a hostPath", m.Name)
			continue
		}
		bidir = append(bidir, v.HostPath.Path)
		for _, o := range hostPaths {
			if o != v.HostPath.Path && (isUnder(o, v.HostPath.Path) || isUnder(v.HostPath.Path, o)) {
				t.Errorf("Bidirectional hostPath %s and hostPath %s are nested", v.HostPath.Path, o)
			}
		}
		for _, o := range c.VolumeMounts {
			if o.Name != m.Name && (isUnder(o.MountPath, m.MountPath) || isUnder(m.MountPath, o.MountPath)) {
				t.Errorf("Bidirectional mount at %s and mount %q at %s are nested", m.MountPath, o.Name, o.MountPath)
			}
		}
	}
	slices.Sort(bidir)
	wantBidir := []string{sc.root + "/pods", "/run/bpfmount", "/sys/fs/bpf"}
	slices.Sort(wantBidir)
	if !slices.Equal(bidir, wantBidir) {
		t.Errorf("Bidirectional hostPaths %v, want exactly %v", bidir, wantBidir)
	}
	if isUnder(sc.root, sc.root+"/pods") || slices.Contains(hostPaths, sc.root) {
		t.Errorf("kubelet's root %s itself is mounted", sc.root)
	}

	// The flags point into the mounts.
	f, _ := flags(t, c.Args)
	inMount := func(flag, p, vol string) {
		t.Helper()
		m, ok := mountOf[vol]
		if !ok || !isUnder(p, m.MountPath) {
			t.Errorf("--%s=%s is not inside the %q mount (%s)", flag, p, vol, m.MountPath)
		}
	}
	ep := strings.TrimPrefix(f["endpoint"], "unix://")
	inMount("endpoint", ep, "plugin-dir")
	inMount("registration-socket", f["registration-socket"], "registration-dir")
	inMount("state-dir", f["state-dir"], "state-dir")
	inMount("bpffs-root", f["bpffs-root"], "bpffs")
	inMount("image-cache", f["image-cache"], "image-cache")
	inMount("policy", f["policy"], "policy")
	// The registration path is the endpoint seen from the host: the same
	// file name in the plugin-dir volume's host directory.
	if got, want := f["kubelet-registration-path"], path.Join(vols["plugin-dir"].HostPath.Path, path.Base(ep)); got != want {
		t.Errorf("--kubelet-registration-path=%s, want the endpoint's host path %s", got, want)
	}
	if path.Dir(f["kubelet-registration-path"]) != sc.root+"/plugins/"+driverName {
		t.Errorf("--kubelet-registration-path=%s is not under %s/plugins", f["kubelet-registration-path"], sc.root)
	}
	// kubelet ignores registration sockets whose names start with ".".
	if strings.HasPrefix(path.Base(f["registration-socket"]), ".") {
		t.Errorf("registration socket name %q starts with \".\"", f["registration-socket"])
	}
	if m := mountOf["tmp"]; m.MountPath != "/tmp" || vols["tmp"].EmptyDir == nil {
		t.Error("no emptyDir at /tmp for the read-only root filesystem")
	}
}

func checkRBAC(t *testing.T, sc scenario, objs []decoded, ds *appsv1.DaemonSet) {
	t.Helper()
	sas := objectsOf[*corev1.ServiceAccount](objs)
	if sc.saCreate {
		if len(sas) != 1 || sas[0].Name != ds.Spec.Template.Spec.ServiceAccountName {
			t.Errorf("ServiceAccount %v does not match the DaemonSet's %q", sas, ds.Spec.Template.Spec.ServiceAccountName)
		}
	}
	if !sc.rbac {
		return
	}
	cr := one[*rbacv1.ClusterRole](t, objs)
	crb := one[*rbacv1.ClusterRoleBinding](t, objs)
	type grant struct{ group, resource, verb string }
	var got []grant
	for _, r := range cr.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("unexpected rule %+v", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					got = append(got, grant{g, res, v})
				}
			}
		}
	}
	want := []grant{
		{"", "events", "create"}, {"", "events", "patch"},
		{"events.k8s.io", "events", "create"}, {"events.k8s.io", "events", "patch"},
		{"", "pods", "get"},
	}
	cmp := func(a, b grant) int {
		return strings.Compare(a.group+"/"+a.resource+"/"+a.verb, b.group+"/"+b.resource+"/"+b.verb)
	}
	slices.SortFunc(got, cmp)
	slices.SortFunc(want, cmp)
	if !slices.Equal(got, want) {
		t.Errorf("ClusterRole grants %v, want exactly %v", got, want)
	}
	if crb.RoleRef.Kind != "ClusterRole" || crb.RoleRef.Name != cr.Name || crb.RoleRef.APIGroup != rbacv1.GroupName {
		t.Errorf("ClusterRoleBinding roleRef %+v does not name ClusterRole %q", crb.RoleRef, cr.Name)
	}
	if len(crb.Subjects) != 1 || crb.Subjects[0].Kind != "ServiceAccount" ||
		crb.Subjects[0].Name != ds.Spec.Template.Spec.ServiceAccountName || crb.Subjects[0].Namespace != releaseNS {
		t.Errorf("ClusterRoleBinding subjects %+v, want the DaemonSet's service account %s/%s", crb.Subjects, releaseNS, ds.Spec.Template.Spec.ServiceAccountName)
	}
}

func checkPolicy(t *testing.T, sc scenario, objs []decoded, ds *appsv1.DaemonSet) {
	t.Helper()
	var polVol *corev1.Volume
	for i, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == "policy" {
			polVol = &ds.Spec.Template.Spec.Volumes[i]
		}
	}
	if polVol == nil || polVol.ConfigMap == nil {
		t.Fatal("no policy ConfigMap volume")
	}
	var cm *corev1.ConfigMap
	for _, c := range objectsOf[*corev1.ConfigMap](objs) {
		if c.Name == polVol.ConfigMap.Name {
			cm = c
		}
	}
	if cm == nil {
		t.Fatalf("the policy volume names ConfigMap %q, which is not rendered", polVol.ConfigMap.Name)
	}
	if polVol.ConfigMap.Items != nil {
		t.Error("the policy volume selects items: mount the whole ConfigMap")
	}
	data, ok := cm.Data["policy.yaml"]
	if !ok {
		t.Fatalf("ConfigMap %s has no policy.yaml (keys %v)", cm.Name, slices.Collect(maps.Keys(cm.Data)))
	}
	p, err := policy.Parse([]byte(data))
	if err != nil {
		t.Fatalf("the rendered policy does not parse: %v\n%s", err, data)
	}
	for _, pc := range sc.policy {
		d := p.Decide(pc.req)
		if d.Allowed != pc.allow {
			t.Errorf("policy decision for %+v: allowed=%v (rule %q, %s), want %v", pc.req, d.Allowed, d.Rule, d.Reason, pc.allow)
		}
	}
	// No checksum of the policy on the pod: the driver hot-reloads it and
	// a policy change must not roll the DaemonSet.
	for k := range ds.Spec.Template.Annotations {
		if strings.Contains(k, "checksum") {
			t.Errorf("pod template annotation %q: a policy change would restart every driver", k)
		}
	}
}

func checkMetrics(t *testing.T, sc scenario, objs []decoded, ds *appsv1.DaemonSet) {
	t.Helper()
	podLabels := labels.Set(ds.Spec.Template.Labels)
	if svcs := objectsOf[*corev1.Service](objs); sc.service {
		if len(svcs) != 1 {
			t.Fatalf("want one metrics Service, got %d", len(svcs))
		}
		s := svcs[0]
		if s.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("metrics Service clusterIP %q, want None", s.Spec.ClusterIP)
		}
		if len(s.Spec.Selector) == 0 || !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) {
			t.Errorf("metrics Service selector %v does not select the driver pods", s.Spec.Selector)
		}
		if len(s.Spec.Ports) != 1 || s.Spec.Ports[0].TargetPort.String() != "metrics" || int(s.Spec.Ports[0].Port) != sc.metricsPort {
			t.Errorf("metrics Service ports %+v", s.Spec.Ports)
		}
	}
	if pms := objectsOf[*podMonitor](objs); sc.podMonitor {
		if len(pms) != 1 {
			t.Fatalf("want one PodMonitor, got %d", len(pms))
		}
		pm := pms[0]
		sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
		if err != nil || sel.Empty() || !sel.Matches(podLabels) {
			t.Errorf("PodMonitor selector %v does not select the driver pods", pm.Spec.Selector)
		}
		if !slices.Equal(pm.Spec.NamespaceSelector.MatchNames, []string{releaseNS}) {
			t.Errorf("PodMonitor namespaceSelector %+v", pm.Spec.NamespaceSelector)
		}
		if len(pm.Spec.PodMetricsEndpoints) != 1 || pm.Spec.PodMetricsEndpoints[0].Port != "metrics" || pm.Spec.PodMetricsEndpoints[0].Path != "/metrics" {
			t.Errorf("PodMonitor endpoints %+v", pm.Spec.PodMetricsEndpoints)
		}
		if pm.Labels["release"] != "prometheus" {
			t.Errorf("PodMonitor labels %v lack the configured release=prometheus", pm.Labels)
		}
	}
}

// TestRenderIsDeterministic guards the drift test: two renders of the same
// values are identical.
func TestRenderIsDeterministic(t *testing.T) {
	a, err := render.DefaultManifests(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		b, err := render.DefaultManifests(chartDir)
		if err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Fatal("two renders of the default values differ")
		}
	}
}
