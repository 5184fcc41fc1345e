package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/bpfmount/bpfmount/internal/testenv"
	kcluster "github.com/bpfmount/bpfmount/test/e2e/cluster"
)

// TestUpDown is `make cluster`, a user's `kubectl apply` of the example,
// and `make cluster-down`, through the command's binary: the cluster
// outlives `up`, runs the example, `down` refuses what `up` did not make,
// and after `down` the machine is as before. Root and the Kubernetes
// binaries, like the e2e test (`make e2e` runs both, one after the other).
func TestUpDown(t *testing.T) {
	repo, err := filepath.Abs("../../../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(repo, "test", "e2e", ".cache", "bin")
	images, version := os.Getenv("BPFMOUNT_E2E_IMAGES"), os.Getenv("BPFMOUNT_E2E_IMAGE_VERSION")
	if images == "" {
		images = filepath.Join(repo, "build", "images")
	}
	if version == "" {
		version = "dev"
	}
	why := kcluster.Missing(bin)
	if why == "" {
		if err := kcluster.CheckReleaseImages(kcluster.ReleaseImages(images, version)); err != nil {
			why = err.Error()
		}
	}
	if why != "" {
		if os.Getenv("BPFMOUNT_E2E") != "" {
			t.Fatalf("BPFMOUNT_E2E is set but: %s", why)
		}
		t.Skip("skipping: " + why)
	}
	work := workDir()
	cmdBin := filepath.Join(t.TempDir(), "cluster")
	if out, err := exec.Command("go", "build", "-o", cmdBin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	before := snapshot(t, work)

	up := exec.Command(cmdBin, "up", "-repo", repo, "-images", images, "-version", version, "-work", work)
	out, err := up.CombinedOutput()
	t.Logf("cluster up:\n%s", out)
	// Whatever happens below, nothing is left running.
	t.Cleanup(func() {
		if _, err := os.Stat(kcluster.StatePath(work)); err == nil {
			out, _ := exec.Command(cmdBin, "down", "-work", work).CombinedOutput()
			t.Logf("cleanup: cluster down:\n%s", out)
		}
	})
	if err != nil {
		t.Fatalf("cluster up: %v", err)
	}
	kubeconfig := filepath.Join(work, "admin.kubeconfig")
	if !strings.Contains(string(out), "export KUBECONFIG="+kubeconfig) {
		t.Fatalf("cluster up did not print the KUBECONFIG to use")
	}

	// The components outlived up: they run, and up (their parent) is gone.
	procs := stateProcs(t, work)
	if len(procs) != 6 {
		t.Fatalf("state records %d processes, want 6: %+v", len(procs), procs)
	}
	for _, p := range procs {
		if ppid := parentOf(p.Pid); ppid == 0 || ppid == up.Process.Pid {
			t.Fatalf("%s (pid %d): parent %d; want it running, outliving up (%d)", p.Name, p.Pid, ppid, up.Process.Pid)
		}
	}

	// What a user does with the printed KUBECONFIG.
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	node, err := cs.CoreV1().Nodes().Get(ctx, kcluster.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := false
	for _, c := range node.Status.Conditions {
		ready = ready || c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue
	}
	if !ready {
		t.Fatalf("node not Ready: %+v", node.Status.Conditions)
	}
	ds, err := cs.AppsV1().DaemonSets(kcluster.ReleaseNS).Get(ctx, kcluster.ReleaseName, metav1.GetOptions{})
	if err != nil || ds.Status.NumberReady != 1 {
		t.Fatalf("driver DaemonSet: %v %+v", err, ds.Status)
	}
	apply(t, cs, filepath.Join(repo, "deploy", "examples", "namespace.yaml"), filepath.Join(work, "examples", "xdp-counter-pod.yaml"))
	if err := countsRise(ctx, cs, work); err != nil {
		t.Fatal(err)
	}

	// down refuses a cluster up did not make: no state, or a state whose
	// pid now names another process. Nothing is touched.
	none := t.TempDir()
	if out, err := exec.Command(cmdBin, "down", "-work", none).CombinedOutput(); err == nil || !strings.Contains(string(out), "no cluster state") {
		t.Fatalf("down without a state file: %v\n%s", err, out)
	}
	forged := t.TempDir()
	forgeState(t, work, forged, "kubelet")
	if out, err := exec.Command(cmdBin, "down", "-work", forged).CombinedOutput(); err == nil || !strings.Contains(string(out), "is now another process") {
		t.Fatalf("down with a pid whose start time differs: %v\n%s", err, out)
	}
	if _, err := cs.CoreV1().Nodes().Get(ctx, kcluster.NodeName, metav1.GetOptions{}); err != nil {
		t.Fatalf("the cluster was touched by a refused down: %v", err)
	}

	if out, err := exec.Command(cmdBin, "down", "-work", work).CombinedOutput(); err != nil {
		t.Fatalf("cluster down: %v\n%s", err, out)
	}
	for _, p := range procs {
		if st, err := procStart(p.Pid); err == nil && st == p.Start && !zombie(p.Pid) {
			t.Errorf("%s (pid %d) still runs after down", p.Name, p.Pid)
		}
	}
	if id := testenv.XDPProgram(t, "lo"); id != 0 {
		t.Errorf("XDP program %d left on lo", id)
	}
	after := snapshot(t, work)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s after down:\n%s\nbefore:\n%s", k, after[k], v)
		}
	}
}

func apply(t *testing.T, cs *kubernetes.Clientset, nsFile, podFile string) {
	t.Helper()
	ctx := context.Background()
	var ns corev1.Namespace
	var pod corev1.Pod
	for f, obj := range map[string]any{nsFile: &ns, podFile: &pod} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.UnmarshalStrict(b, obj); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The service account admission plugin refuses pods until the
	// namespace's default service account exists.
	err := kcluster.Poll(ctx, 60*time.Second, func() (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Pods(pod.Namespace).Create(ctx, &pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

var countsRE = regexp.MustCompile(`packets=(\d+)`)

// countsRise waits until the example reader's log shows its count grow.
func countsRise(ctx context.Context, cs *kubernetes.Clientset, work string) error {
	var last string
	err := kcluster.Poll(ctx, 90*time.Second, func() (bool, error) {
		logs, _ := filepath.Glob(filepath.Join(work, "pod-logs", "bpfmount-examples_xdp-counter_*", "reader", "*.log"))
		if len(logs) == 0 {
			p, err := cs.CoreV1().Pods("bpfmount-examples").Get(ctx, "xdp-counter", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return false, fmt.Errorf("no reader log yet; pod %s", p.Status.Phase)
		}
		sort.Strings(logs)
		b, err := os.ReadFile(logs[len(logs)-1])
		if err != nil {
			return false, err
		}
		last = string(b)
		m := countsRE.FindAllStringSubmatch(last, -1)
		if len(m) < 2 {
			return false, nil
		}
		first, _ := strconv.ParseUint(m[0][1], 10, 64)
		now, _ := strconv.ParseUint(m[len(m)-1][1], 10, 64)
		return now > first, nil
	})
	if err != nil {
		return fmt.Errorf("the example's counts did not rise: %v; reader log:\n%s", err, last)
	}
	return nil
}

type procState struct {
	Name  string `json:"name"`
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"`
}

func stateProcs(t *testing.T, work string) []procState {
	t.Helper()
	b, err := os.ReadFile(kcluster.StatePath(work))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Procs []procState `json:"procs"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st.Procs
}

// forgeState copies work's state to dir as if it were dir's, with the
// named process's start time off by one.
func forgeState(t *testing.T, work, dir, name string) {
	t.Helper()
	b, err := os.ReadFile(kcluster.StatePath(work))
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	st["work"] = dir
	for _, p := range st["procs"].([]any) {
		p := p.(map[string]any)
		if p["name"] == name {
			p["start"] = p["start"].(float64) + 1
		}
	}
	b, _ = json.Marshal(st)
	if err := os.WriteFile(kcluster.StatePath(dir), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func stat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
}

func parentOf(pid int) int {
	f := stat(pid)
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

func zombie(pid int) bool {
	f := stat(pid)
	return len(f) > 0 && f[0] == "Z"
}

func procStart(pid int) (uint64, error) {
	f := stat(pid)
	if len(f) < 20 {
		return 0, fmt.Errorf("no process %d", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// snapshot records what the cluster may change on the machine.
func snapshot(t *testing.T, work string) map[string]string {
	t.Helper()
	s := map[string]string{}
	var sys []string
	for _, k := range []string{"kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "vm/panic_on_oom", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"} {
		b, _ := os.ReadFile("/proc/sys/" + k)
		sys = append(sys, k+"="+strings.TrimSpace(string(b)))
	}
	s["sysctls"] = strings.Join(sys, "\n")
	ipt, _ := exec.Command("iptables-save").Output()
	var rules []string
	for _, l := range strings.Split(string(ipt), "\n") {
		if !strings.HasPrefix(l, "#") {
			rules = append(rules, regexp.MustCompile(` \[\d+:\d+\]$`).ReplaceAllString(l, ""))
		}
	}
	s["iptables"] = strings.Join(rules, "\n")
	var paths []string
	for _, p := range []string{work, "/run/bpfmount-e2e", "/run/bpfmount", "/var/cache/bpfmount", "/var/lib/bpfmount", "/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni", "/run/netns", "/run/containerd", "/var/lib/containerd", "/sys/fs/bpf/bpfmount"} {
		if _, err := os.Lstat(p); err == nil {
			paths = append(paths, p)
		}
	}
	s["paths"] = strings.Join(paths, "\n")
	var ms []string
	for _, p := range []string{work, "/run/bpfmount-e2e", "/run/bpfmount", "/var/lib/kubelet", "/run/netns", "/sys/fs/bpf"} {
		ms = append(ms, testenv.MountsUnder(t, p)...)
	}
	s["mounts"] = strings.Join(ms, "\n")
	if _, err := os.Stat("/sys/class/net/bpfme2e0"); err == nil {
		s["bridge"] = "bpfme2e0"
	}
	var cg []string
	for _, h := range []string{"/sys/fs/cgroup/bpfmount-e2e", "/sys/fs/cgroup/cpu/bpfmount-e2e", "/sys/fs/cgroup/memory/bpfmount-e2e"} {
		if _, err := os.Stat(h); err == nil {
			cg = append(cg, h)
		}
	}
	s["cgroups"] = strings.Join(cg, "\n")
	return s
}
