// Package cluster is the single-node Kubernetes of the end-to-end test and
// of `make cluster`: Up brings it up from binaries as processes, Down puts
// the machine back as it was, Save and Load carry it from `make cluster`
// to `make cluster-down`.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Names the cluster gives the node and what it makes on the host.
const (
	NodeName   = "bpfmount-e2e"
	bridgeName = "bpfme2e0"
	podCIDR    = "10.244.77.0/24"
	cgroupRoot = "bpfmount-e2e"
	serviceIP  = "10.0.0.1"

	// DefaultWorkDir holds everything the cluster writes that is not in
	// runDir: etcd's data, certificates, kubelet's root, logs, the state.
	DefaultWorkDir = "/var/lib/bpfmount-e2e"
	runDir         = "/run/bpfmount-e2e"
)

// Host paths the cluster or the chart may create outside the work and run
// directories. Teardown unmounts what is mounted under them and removes
// those that did not exist before the cluster came up.
var hostPaths = []string{
	"/run/bpfmount",              // chart: driver state
	"/var/cache/bpfmount",        // chart: image cache
	"/var/lib/bpfmount",          // chart: localBytecodeDir parent
	"/var/lib/kubelet",           // kubelet: device-plugins
	"/var/log/containers",        // kubelet: container log symlinks
	"/var/log/pods",              // kubelet default pod logs
	"/var/lib/cni",               // libcni result cache
	"/run/netns",                 // containerd CRI: pod netns mounts
	"/run/containerd",            // containerd defaults (fifos, runc)
	"/opt/containerd",            // containerd opt plugin
	"/etc/cni",                   // CNI default config dir
	"/var/lib/containerd",        // containerd default root
	"/sys/fs/bpf/bpfmount",       // driver pins (on a bpffs)
	"/var/lib/bpfmount/bytecode", // (kept in list for the mount scan)
}

// Sysctls kubelet changes (protectKernelDefaults=false); restored at
// teardown.
var sysctls = []string{
	"kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "vm/panic_on_oom",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// Cluster is a single-node Kubernetes: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, containerd and kubelet, started
// as processes and stopped by pid. Everything it writes lives under Work
// and Run, except for what kubelet, containerd and the chart insist on
// (hostPaths), which Down removes when it was not there before.
type Cluster struct {
	Work, Run  string
	Bin        string // Kubernetes binaries, and the host tools BuildHostTools builds
	KubeletDir string
	Kubeconfig string
	APIPort    int
	Containerd string // containerd's socket

	// Set once the apiserver answers (Up), or by Load when it runs.
	CS  *kubernetes.Clientset
	Cfg *rest.Config

	// detach: processes outlive this program (own session, no parent
	// death signal) and the state is saved after each step, so that
	// another program can Load it and bring the cluster down.
	detach bool

	procs       []*proc
	existed     map[string]bool
	sysctlSaved map[string]string
	mountedBPF  bool
	iptables    string
	bootID      string

	// touched: Up got past its checks and may have changed the machine.
	// Until then Down has nothing to undo, and must not act on the empty
	// record (it would take every host path for one the cluster made).
	touched   bool
	hostPaths []string

	log func(format string, args ...any)
}

// Options say where a cluster lives and how it runs.
type Options struct {
	// Work is the work directory (DefaultWorkDir when empty).
	Work string
	// Bin holds kube-apiserver, kube-controller-manager, kube-scheduler
	// and kubelet.
	Bin string
	// Detach makes the processes outlive the program that started them and
	// saves the state (Save) after each step of Up: `make cluster`.
	// Without it (the e2e test) they get SIGTERM when it dies.
	Detach bool
	// Logf reports progress (nil: silent).
	Logf func(format string, args ...any)
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreePort returns a TCP port free on 127.0.0.1 now.
func FreePort() int { return freePort() }

// New describes a cluster; Up brings it up.
func New(o Options) *Cluster {
	if o.Work == "" {
		o.Work = DefaultWorkDir
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	c := &Cluster{
		Work: o.Work, Run: runDir, Bin: o.Bin, detach: o.Detach, log: o.Logf,
		existed: map[string]bool{}, sysctlSaved: map[string]string{}, hostPaths: hostPaths,
	}
	c.KubeletDir = filepath.Join(c.Work, "kubelet")
	c.Kubeconfig = filepath.Join(c.Work, "admin.kubeconfig")
	c.Containerd = filepath.Join(c.Run, "containerd", "containerd.sock")
	return c
}

// Up brings the cluster to a Ready node. On error the caller still calls
// Down, which undoes what Up did.
func (c *Cluster) Up(ctx context.Context) error {
	if _, err := os.Stat(StatePath(c.Work)); err == nil {
		return fmt.Errorf("a cluster made by `make cluster` is up (its state is in %s): bring it down with `make cluster-down` first", StatePath(c.Work))
	}
	// A previous run killed mid-way may have left its directories.
	if _, err := os.Stat(c.Work); err == nil {
		return fmt.Errorf("%s exists: a previous run did not clean up; remove it (after unmounting what is under it) and retry", c.Work)
	}
	c.touched = true
	if b, err := os.ReadFile(bootIDPath); err == nil {
		c.bootID = strings.TrimSpace(string(b))
	}
	for _, p := range c.hostPaths {
		_, err := os.Lstat(p)
		c.existed[p] = err == nil
	}
	for _, s := range sysctls {
		b, err := os.ReadFile("/proc/sys/" + s)
		if err == nil {
			c.sysctlSaved[s] = strings.TrimSpace(string(b))
		}
	}
	if out, err := exec.Command("iptables-save").Output(); err == nil {
		c.iptables = stripCounters(string(out))
	}
	for _, d := range []string{c.Work, c.Run, filepath.Join(c.Work, "logs"), c.KubeletDir, filepath.Join(c.Work, "pki")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// From here on, what Down must undo is on record.
	if err := c.saveIfDetached(); err != nil {
		return err
	}
	// kubelet's root must be a shared mount so the driver's Bidirectional
	// mounts of pod volumes reach kubelet and the pods.
	if err := makeSharedBind(c.KubeletDir); err != nil {
		return err
	}
	// The chart's Bidirectional hostPaths need shared mounts too: a bpffs at
	// /sys/fs/bpf (none on this host) and /run/bpfmount.
	if !isMountPoint("/sys/fs/bpf") {
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mounting bpffs: %w", err)
		}
		c.mountedBPF = true
	}
	if err := unix.Mount("", "/sys/fs/bpf", "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("making /sys/fs/bpf shared: %w", err)
	}
	if err := os.MkdirAll("/run/bpfmount", 0o700); err != nil {
		return err
	}
	if err := makeSharedBind("/run/bpfmount"); err != nil {
		return err
	}
	if err := c.saveIfDetached(); err != nil {
		return err
	}
	if err := c.makeCgroupRoot(); err != nil {
		return err
	}
	if err := c.pki(); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	start := time.Now()
	etcdPort, etcdPeer := freePort(), freePort()
	c.APIPort = freePort()
	if err := c.start("etcd", "/usr/bin/etcd",
		"--name=e2e", "--data-dir="+filepath.Join(c.Work, "etcd"),
		fmt.Sprintf("--listen-client-urls=http://127.0.0.1:%d", etcdPort),
		fmt.Sprintf("--advertise-client-urls=http://127.0.0.1:%d", etcdPort),
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-cluster=e2e=http://127.0.0.1:%d", etcdPeer),
		"--quota-backend-bytes=2147483648",
	); err != nil {
		return err
	}
	pki := func(f string) string { return filepath.Join(c.Work, "pki", f) }
	if err := c.start("kube-apiserver", filepath.Join(c.Bin, "kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", c.APIPort),
		"--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
		"--tls-cert-file="+pki("apiserver.crt"), "--tls-private-key-file="+pki("apiserver.key"),
		"--client-ca-file="+pki("ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+pki("sa.pub"), "--service-account-signing-key-file="+pki("sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
		"--authorization-mode=RBAC",
		"--kubelet-client-certificate="+pki("admin.crt"), "--kubelet-client-key="+pki("admin.key"),
		"--kubelet-preferred-address-types=InternalIP",
		"--enable-priority-and-fairness=false", "--profiling=false",
		"--cert-dir="+filepath.Join(c.Work, "pki", "apiserver-generated"),
	); err != nil {
		return err
	}
	if err := c.writeKubeconfig(); err != nil {
		return err
	}
	if err := c.waitAPI(ctx); err != nil {
		return err
	}
	c.log("apiserver up after %v", time.Since(start).Round(time.Millisecond))
	if err := c.start("kube-controller-manager", filepath.Join(c.Bin, "kube-controller-manager"),
		"--kubeconfig="+c.Kubeconfig, "--leader-elect=false", "--secure-port=0",
		"--service-account-private-key-file="+pki("sa.key"), "--root-ca-file="+pki("ca.crt"),
		"--use-service-account-credentials=false", "--profiling=false",
		"--controllers=*,-bootstrap-signer-controller,-token-cleaner-controller,-persistentvolume-expander-controller",
		"--concurrent-gc-syncs=2",
	); err != nil {
		return err
	}
	if err := c.start("kube-scheduler", filepath.Join(c.Bin, "kube-scheduler"),
		"--kubeconfig="+c.Kubeconfig, "--leader-elect=false", "--secure-port=0", "--profiling=false",
	); err != nil {
		return err
	}
	if err := c.startContainerd(); err != nil {
		return err
	}
	if err := c.startKubelet(); err != nil {
		return err
	}
	if err := c.waitNodeReady(ctx); err != nil {
		return err
	}
	c.log("node Ready after %v", time.Since(start).Round(time.Millisecond))
	return nil
}

func (c *Cluster) startContainerd() error {
	dir := filepath.Join(c.Work, "containerd")
	for _, d := range []string{dir, filepath.Join(c.Work, "cni", "net.d"), filepath.Join(c.Run, "containerd")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.introspection-not-disabled", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[7]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[8]q
`, filepath.Join(dir, "root"), filepath.Join(c.Run, "containerd", "state"), c.Containerd,
		filepath.Join(c.Run, "containerd", "ttrpc.sock"), filepath.Join(dir, "opt"), PauseImage,
		filepath.Join(c.Run, "runc"), filepath.Join(c.Work, "cni", "net.d"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	// A bridge without a gateway address: no ip_forward, no iptables.
	cni := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "bpfmount-e2e",
  "plugins": [{
    "type": "bridge", "bridge": %q, "isGateway": false, "ipMasq": false, "hairpinMode": false,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "dataDir": %q}
  }]
}`, bridgeName, podCIDR, filepath.Join(c.Work, "cni", "ipam"))
	if err := os.WriteFile(filepath.Join(c.Work, "cni", "net.d", "10-bpfmount-e2e.conflist"), []byte(cni), 0o644); err != nil {
		return err
	}
	if err := c.start("containerd", "/usr/bin/containerd", "--config", cfgPath); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if err := c.Ctr("version"); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("containerd did not start (see logs/containerd.log)")
}

// ctr runs ctr against the test's containerd in the k8s.io namespace.
func (c *Cluster) Ctr(args ...string) error {
	out, err := c.ctrOutput(args...)
	if err != nil {
		return fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (c *Cluster) ctrOutput(args ...string) (string, error) {
	a := append([]string{"--address", c.Containerd, "-n", "k8s.io"}, args...)
	out, err := exec.Command("ctr", a...).CombinedOutput()
	return string(out), err
}

func (c *Cluster) startKubelet() error {
	pki := func(f string) string { return filepath.Join(c.Work, "pki", f) }
	port := freePort()
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: %d
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %q}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: /%s
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
podLogsDir: %q
makeIPTablesUtilChains: false
protectKernelDefaults: false
serializeImagePulls: false
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
  nodefs.inodesFree: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
volumeStatsAggPeriod: 0s
nodeStatusReportFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 0s
staticPodPath: ""
resolvConf: /etc/resolv.conf
enableControllerAttachDetach: true
`, port, pki("ca.crt"), cgroupRoot, c.Containerd, filepath.Join(c.Work, "pod-logs"))
	path := filepath.Join(c.Work, "kubelet.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	return c.start("kubelet", filepath.Join(c.Bin, "kubelet"),
		"--config="+path, "--kubeconfig="+c.Kubeconfig, "--root-dir="+c.KubeletDir,
		"--hostname-override="+NodeName, "--cert-dir="+filepath.Join(c.KubeletDir, "pki"), "-v=2",
	)
}

func (c *Cluster) waitAPI(ctx context.Context) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 100, 200
	c.Cfg = cfg
	c.CS = kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for {
		var status int
		res := c.CS.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status)
		if res.Error() == nil && status == 200 {
			// The default service account machinery and priority classes
			// come with the server; the namespace must exist too.
			if _, err := c.CS.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready (see logs/kube-apiserver.log): %v", res.Error())
		case <-time.After(300 * time.Millisecond):
		}
		if p := c.proc("kube-apiserver"); p != nil && p.exited() {
			return errors.New("kube-apiserver exited (see logs/kube-apiserver.log)")
		}
	}
}

func (c *Cluster) waitNodeReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	for {
		n, err := c.CS.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err == nil {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					return nil
				}
			}
		}
		for _, name := range []string{"kubelet", "containerd"} {
			if p := c.proc(name); p == nil || p.exited() {
				return fmt.Errorf("%s exited (see logs/%s.log)", name, name)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node not Ready (see logs/kubelet.log): %v", err)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func (c *Cluster) writeKubeconfig() error {
	pki := func(f string) string { return filepath.Join(c.Work, "pki", f) }
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://127.0.0.1:%d", certificate-authority: %q}
users:
- name: admin
  user: {client-certificate: %q, client-key: %q}
contexts:
- name: e2e
  context: {cluster: e2e, user: admin, namespace: default}
current-context: e2e
`, c.APIPort, pki("ca.crt"), pki("admin.crt"), pki("admin.key"))
	return os.WriteFile(c.Kubeconfig, []byte(kc), 0o600)
}
