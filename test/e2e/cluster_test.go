package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// The single-node cluster: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, containerd and kubelet, all started by the test as
// processes it owns and stops by pid. Everything it writes lives under
// workDir and runDir, except for what kubelet, containerd and the chart
// insist on (listed in hostPaths), which teardown removes when it was not
// there before.
const (
	nodeName   = "bpfmount-e2e"
	bridgeName = "bpfme2e0"
	podCIDR    = "10.244.77.0/24"
	cgroupRoot = "bpfmount-e2e"
	serviceIP  = "10.0.0.1"
)

// Host paths the cluster or the chart may create outside workDir/runDir.
// Teardown unmounts what is mounted under them and removes those that did
// not exist before the test.
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

type cluster struct {
	work, run  string
	bin        string // k8s + test binaries
	kubeletDir string
	kubeconfig string
	apiPort    int
	containerd string // socket

	procs       []*proc
	existed     map[string]bool
	sysctlSaved map[string]string
	mountedBPF  bool
	iptables    string

	cs  *kubernetes.Clientset
	cfg *rest.Config
	log func(format string, args ...any)
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newCluster(bin string, logf func(string, ...any)) *cluster {
	work := os.Getenv("BPFMOUNT_E2E_DIR")
	if work == "" {
		work = "/var/lib/bpfmount-e2e"
	}
	c := &cluster{
		work: work, run: "/run/bpfmount-e2e", bin: bin, log: logf,
		existed: map[string]bool{}, sysctlSaved: map[string]string{},
	}
	c.kubeletDir = filepath.Join(work, "kubelet")
	c.kubeconfig = filepath.Join(work, "admin.kubeconfig")
	c.containerd = filepath.Join(c.run, "containerd", "containerd.sock")
	return c
}

// up brings the cluster to a Ready node. On error the caller still calls
// down.
func (c *cluster) up(ctx context.Context) error {
	// A previous run killed mid-way may have left its directories.
	if _, err := os.Stat(c.work); err == nil {
		return fmt.Errorf("%s exists: a previous run did not clean up; remove it (after unmounting what is under it) and retry", c.work)
	}
	for _, p := range hostPaths {
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
	for _, d := range []string{c.work, c.run, filepath.Join(c.work, "logs"), c.kubeletDir, filepath.Join(c.work, "pki")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// kubelet's root must be a shared mount so the driver's Bidirectional
	// mounts of pod volumes reach kubelet and the pods.
	if err := makeSharedBind(c.kubeletDir); err != nil {
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
	if err := c.makeCgroupRoot(); err != nil {
		return err
	}
	if err := c.pki(); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	start := time.Now()
	etcdPort, etcdPeer := freePort(), freePort()
	c.apiPort = freePort()
	if err := c.start("etcd", "/usr/bin/etcd",
		"--name=e2e", "--data-dir="+filepath.Join(c.work, "etcd"),
		fmt.Sprintf("--listen-client-urls=http://127.0.0.1:%d", etcdPort),
		fmt.Sprintf("--advertise-client-urls=http://127.0.0.1:%d", etcdPort),
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-cluster=e2e=http://127.0.0.1:%d", etcdPeer),
		"--quota-backend-bytes=2147483648",
	); err != nil {
		return err
	}
	pki := func(f string) string { return filepath.Join(c.work, "pki", f) }
	if err := c.start("kube-apiserver", filepath.Join(c.bin, "kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", c.apiPort),
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
		"--cert-dir="+filepath.Join(c.work, "pki", "apiserver-generated"),
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
	if err := c.start("kube-controller-manager", filepath.Join(c.bin, "kube-controller-manager"),
		"--kubeconfig="+c.kubeconfig, "--leader-elect=false", "--secure-port=0",
		"--service-account-private-key-file="+pki("sa.key"), "--root-ca-file="+pki("ca.crt"),
		"--use-service-account-credentials=false", "--profiling=false",
		"--controllers=*,-bootstrap-signer-controller,-token-cleaner-controller,-persistentvolume-expander-controller",
		"--concurrent-gc-syncs=2",
	); err != nil {
		return err
	}
	if err := c.start("kube-scheduler", filepath.Join(c.bin, "kube-scheduler"),
		"--kubeconfig="+c.kubeconfig, "--leader-elect=false", "--secure-port=0", "--profiling=false",
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

func (c *cluster) start(name, path string, args ...string) error {
	logf, err := os.Create(filepath.Join(c.work, "logs", name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
	c.procs = append(c.procs, p)
	return nil
}

// stop stops one process by its pid: SIGTERM, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (c *cluster) proc(name string) *proc {
	for _, p := range c.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

func (c *cluster) startContainerd() error {
	dir := filepath.Join(c.work, "containerd")
	for _, d := range []string{dir, filepath.Join(c.work, "cni", "net.d"), filepath.Join(c.run, "containerd")} {
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
`, filepath.Join(dir, "root"), filepath.Join(c.run, "containerd", "state"), c.containerd,
		filepath.Join(c.run, "containerd", "ttrpc.sock"), filepath.Join(dir, "opt"), pauseImage,
		filepath.Join(c.run, "runc"), filepath.Join(c.work, "cni", "net.d"))
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
}`, bridgeName, podCIDR, filepath.Join(c.work, "cni", "ipam"))
	if err := os.WriteFile(filepath.Join(c.work, "cni", "net.d", "10-bpfmount-e2e.conflist"), []byte(cni), 0o644); err != nil {
		return err
	}
	if err := c.start("containerd", "/usr/bin/containerd", "--config", cfgPath); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if err := c.ctr("version"); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("containerd did not start (see logs/containerd.log)")
}

// ctr runs ctr against the test's containerd in the k8s.io namespace.
func (c *cluster) ctr(args ...string) error {
	out, err := c.ctrOutput(args...)
	if err != nil {
		return fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (c *cluster) ctrOutput(args ...string) (string, error) {
	a := append([]string{"--address", c.containerd, "-n", "k8s.io"}, args...)
	out, err := exec.Command("ctr", a...).CombinedOutput()
	return string(out), err
}

func (c *cluster) startKubelet() error {
	pki := func(f string) string { return filepath.Join(c.work, "pki", f) }
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
`, port, pki("ca.crt"), cgroupRoot, c.containerd, filepath.Join(c.work, "pod-logs"))
	path := filepath.Join(c.work, "kubelet.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	return c.start("kubelet", filepath.Join(c.bin, "kubelet"),
		"--config="+path, "--kubeconfig="+c.kubeconfig, "--root-dir="+c.kubeletDir,
		"--hostname-override="+nodeName, "--cert-dir="+filepath.Join(c.kubeletDir, "pki"), "-v=2",
	)
}

func (c *cluster) waitAPI(ctx context.Context) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 100, 200
	c.cfg = cfg
	c.cs = kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for {
		var status int
		res := c.cs.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status)
		if res.Error() == nil && status == 200 {
			// The default service account machinery and priority classes
			// come with the server; the namespace must exist too.
			if _, err := c.cs.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready (see logs/kube-apiserver.log): %v", res.Error())
		case <-time.After(300 * time.Millisecond):
		}
		if p := c.proc("kube-apiserver"); p != nil {
			select {
			case <-p.done:
				return errors.New("kube-apiserver exited (see logs/kube-apiserver.log)")
			default:
			}
		}
	}
}

func (c *cluster) waitNodeReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	for {
		n, err := c.cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err == nil {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					return nil
				}
			}
		}
		for _, name := range []string{"kubelet", "containerd"} {
			select {
			case <-c.proc(name).done:
				return fmt.Errorf("%s exited (see logs/%s.log)", name, name)
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node not Ready (see logs/kubelet.log): %v", err)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func (c *cluster) writeKubeconfig() error {
	pki := func(f string) string { return filepath.Join(c.work, "pki", f) }
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
`, c.apiPort, pki("ca.crt"), pki("admin.crt"), pki("admin.key"))
	return os.WriteFile(c.kubeconfig, []byte(kc), 0o600)
}

// pki writes a CA, the apiserver's serving certificate, one client
// certificate in system:masters used by every component (and by the
// apiserver towards kubelet), and the service account signing key.
func (c *cluster) pki() error {
	dir := filepath.Join(c.work, "pki")
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bpfmount-e2e-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name string, typ string, der []byte) error {
		return os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
	}
	if err := write("ca.crt", "CERTIFICATE", caDER); err != nil {
		return err
	}
	leaf := func(name string, tmpl *x509.Certificate) error {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return err
		}
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(48*time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		if err := write(name+".crt", "CERTIFICATE", der); err != nil {
			return err
		}
		return write(name+".key", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key))
	}
	if err := leaf("apiserver", &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(serviceIP)},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	}); err != nil {
		return err
	}
	if err := leaf("admin", &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "bpfmount-e2e-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return err
	}
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	if err := write("sa.key", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(sa)); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return err
	}
	return write("sa.pub", "PUBLIC KEY", pub)
}

// cgroup v1 hierarchies (or the v2 root) where kubelet's cgroupRoot is
// created and, at teardown, removed.
func cgroupHierarchies() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		i := indexOf(fields, "-")
		if i < 0 || i+1 >= len(fields) {
			continue
		}
		if fs := fields[i+1]; fs == "cgroup" || fs == "cgroup2" {
			out = append(out, fields[4])
		}
	}
	return out
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func (c *cluster) makeCgroupRoot() error {
	for _, h := range cgroupHierarchies() {
		d := filepath.Join(h, cgroupRoot)
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			return fmt.Errorf("creating cgroup %s: %w", d, err)
		}
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, _ := os.ReadFile(filepath.Join(h, f))
				os.WriteFile(filepath.Join(d, f), b, 0o644)
			}
		}
	}
	return nil
}

func removeCgroups() []error {
	var errs []error
	for _, h := range cgroupHierarchies() {
		root := filepath.Join(h, cgroupRoot)
		if _, err := os.Stat(root); err != nil {
			continue
		}
		var dirs []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			var err error
			for try := 0; try < 50; try++ {
				if err = unix.Rmdir(dirs[i]); err == nil || errors.Is(err, unix.ENOENT) {
					err = nil
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errs
}

func makeSharedBind(dir string) error {
	if err := unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s shared: %w", dir, err)
	}
	return nil
}

func isMountPoint(p string) bool {
	for _, m := range mountPoints() {
		if m == p {
			return true
		}
	}
	return false
}

func mountPoints() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 {
			out = append(out, unescapeMount(f[4]))
		}
	}
	return out
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder unmounts every mount at or below each prefix, deepest first.
func unmountUnder(prefixes ...string) []error {
	var ms []string
	for _, m := range mountPoints() {
		for _, p := range prefixes {
			if m == p || strings.HasPrefix(m, p+"/") {
				ms = append(ms, m)
				break
			}
		}
	}
	sort.SliceStable(ms, func(i, j int) bool { return strings.Count(ms[i], "/") > strings.Count(ms[j], "/") })
	var errs []error
	// Several passes: stacked mounts at one path, and mounts that appear
	// under a path only once the one above is gone.
	for pass := 0; pass < 5 && len(ms) > 0; pass++ {
		var left []string
		for _, m := range ms {
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				left = append(left, m)
			}
		}
		ms = left
	}
	for _, m := range ms {
		errs = append(errs, fmt.Errorf("could not unmount %s", m))
	}
	return errs
}

// down stops everything and puts the machine back as it was. It reports
// what it could not undo.
func (c *cluster) down() []error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// Pods first, while kubelet runs, so that volumes are unpublished,
	// containers stopped and CNI torn down the ordinary way.
	if c.cs != nil && c.proc("kubelet") != nil {
		c.deleteAllPods(ctx)
	}
	for _, name := range []string{"kubelet", "kube-scheduler", "kube-controller-manager"} {
		if p := c.proc(name); p != nil {
			p.stop(15 * time.Second)
		}
	}
	// Whatever is still running in containerd (a pod kubelet could not
	// stop): kill its tasks, then the sandboxes' shims.
	if p := c.proc("containerd"); p != nil {
		if out, err := c.ctrOutput("tasks", "ls", "-q"); err == nil {
			for _, id := range strings.Fields(out) {
				c.ctr("tasks", "kill", "-s", "SIGKILL", id)
				time.Sleep(100 * time.Millisecond)
				c.ctr("tasks", "rm", "-f", id)
			}
		}
		p.stop(15 * time.Second)
	}
	errs = append(errs, c.killShims()...)
	for _, name := range []string{"kube-apiserver", "etcd"} {
		if p := c.proc(name); p != nil {
			p.stop(15 * time.Second)
		}
	}
	// Pod network namespaces containerd left behind.
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "cni-") {
				p := filepath.Join("/run/netns", e.Name())
				unix.Unmount(p, unix.MNT_DETACH)
				os.Remove(p)
			}
		}
	}
	if out, err := exec.Command("ip", "link", "del", bridgeName).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
		errs = append(errs, fmt.Errorf("deleting bridge: %v: %s", err, out))
	}
	prefixes := []string{c.work, c.run, "/run/bpfmount", "/sys/fs/bpf/bpfmount"}
	for _, p := range []string{"/var/lib/kubelet", "/run/containerd", "/run/netns"} {
		if !c.existed[p] {
			prefixes = append(prefixes, p)
		}
	}
	errs = append(errs, unmountUnder(prefixes...)...)
	if c.mountedBPF {
		if err := unix.Unmount("/sys/fs/bpf", unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmounting /sys/fs/bpf: %w", err))
		}
	}
	errs = append(errs, removeCgroups()...)
	for _, p := range hostPaths {
		if !c.existed[p] {
			if err := os.RemoveAll(p); err != nil && !strings.HasPrefix(p, "/sys/") {
				errs = append(errs, err)
			}
		}
	}
	for s, v := range c.sysctlSaved {
		if err := os.WriteFile("/proc/sys/"+s, []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restoring %s: %w", s, err))
		}
	}
	if c.iptables != "" {
		if out, err := exec.Command("iptables-save").Output(); err == nil && stripCounters(string(out)) != c.iptables {
			errs = append(errs, fmt.Errorf("iptables changed during the test:\n%s", stripCounters(string(out))))
		}
	}
	if os.Getenv("BPFMOUNT_E2E_KEEP_LOGS") != "" {
		logs := filepath.Join(os.TempDir(), fmt.Sprintf("bpfmount-e2e-logs-%d", time.Now().Unix()))
		exec.Command("cp", "-r", filepath.Join(c.work, "logs"), logs).Run()
		c.log("logs kept in %s", logs)
	}
	if err := os.RemoveAll(c.work); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(c.run); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// killShims stops containerd-shim processes serving the test's containerd
// (found by their -address argument), by pid.
func (c *cluster) killShims() []error {
	var errs []error
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if len(args) == 0 || !strings.Contains(args[0], "containerd-shim") {
			continue
		}
		if indexOf(args, c.containerd) < 0 {
			continue
		}
		c.log("killing leftover shim %d", pid)
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			errs = append(errs, fmt.Errorf("killing shim %d: %w", pid, err))
		}
	}
	return errs
}

// deleteAllPods deletes the workload pods first, while the driver still
// runs to unpublish their volumes, then the DaemonSets and their pods.
func (c *cluster) deleteAllPods(ctx context.Context) {
	waitGone := func(keep func(corev1.Pod) bool) {
		for ctx.Err() == nil {
			pods, err := c.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
			if err != nil {
				return
			}
			left := 0
			for _, p := range pods.Items {
				if !keep(p) {
					left++
				}
			}
			if left == 0 {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	isDriver := func(p corev1.Pod) bool { return p.Namespace == releaseNS }
	pods, err := c.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for _, p := range pods.Items {
		if !isDriver(p) {
			c.cs.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{})
		}
	}
	waitGone(isDriver)
	nss, err := c.cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for _, ns := range nss.Items {
		c.cs.AppsV1().DaemonSets(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		c.cs.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	}
	waitGone(func(corev1.Pod) bool { return false })
}

func stripCounters(s string) string {
	var b bytes.Buffer
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			if i := strings.LastIndex(l, " ["); i > 0 {
				l = l[:i]
			}
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}
