// Package e2e runs bpfmount on a real single-node Kubernetes cluster that
// the test brings up from binaries (see README.md): the chart is installed
// with Helm's library, pods mount CSI inline volumes, kubelet calls the
// driver, and the test checks programs on a veth it owns.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	kcluster "github.com/bpfmount/bpfmount/test/e2e/cluster"
)

const (
	allowedNS = "e2e-allowed"
	deniedNS  = "e2e-denied"

	nodeName      = kcluster.NodeName
	pauseImage    = kcluster.PauseImage
	readerImage   = kcluster.ReaderImage
	bytecodeDir   = kcluster.BytecodeDir
	counterLayout = kcluster.CounterLayout
	seqLayout     = kcluster.SeqLayout
	releaseNS     = kcluster.ReleaseNS
	releaseName   = kcluster.ReleaseName
)

// cluster is the cluster package's Cluster (the same code `make cluster`
// runs) with the test's helpers.
type cluster struct {
	*kcluster.Cluster
}

var (
	repoRoot string
	binDir   string

	setupOnce  sync.Once
	theCluster *cluster
	setupErr   error
	skipWhy    string
	timings    []timing

	poll     = kcluster.Poll
	freePort = kcluster.FreePort
)

func init() {
	_, f, _, _ := runtime.Caller(0)
	repoRoot = filepath.Clean(filepath.Join(filepath.Dir(f), "..", ".."))
	binDir = filepath.Join(filepath.Dir(f), ".cache", "bin")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if theCluster != nil {
		if code != 0 {
			os.Setenv("BPFMOUNT_E2E_KEEP_LOGS", "1") // keep the components' logs of a failed run
		}
		start := time.Now()
		errs := theCluster.Down()
		fmt.Printf("e2e: teardown took %v\n", time.Since(start).Round(time.Millisecond))
		for _, err := range errs {
			fmt.Fprintf(os.Stderr, "e2e: teardown: %v\n", err)
			code = 1
		}
	}
	for _, tm := range timings {
		fmt.Printf("e2e: %s: %v\n", tm.name, tm.d.Round(time.Millisecond))
	}
	os.Exit(code)
}

// setup brings the cluster up once for every test in the package; the
// cluster goes down in TestMain.
func setup(t *testing.T) *cluster {
	t.Helper()
	setupOnce.Do(func() {
		if why := kcluster.Missing(binDir); why != "" {
			skipWhy = why + " (`make e2e` builds what is missing; run it as root)"
			return
		}
		c := &cluster{kcluster.New(kcluster.Options{
			Work: os.Getenv("BPFMOUNT_E2E_DIR"), Bin: binDir,
			Logf: func(f string, a ...any) { fmt.Printf("e2e: "+f+"\n", a...) },
		})}
		ctx := context.Background()
		start := time.Now()
		if setupErr = c.BuildHostTools(repoRoot); setupErr != nil {
			return
		}
		imgs := releaseImages()
		if setupErr = kcluster.CheckReleaseImages(imgs); setupErr != nil {
			return
		}
		addTiming("build test binaries", time.Since(start))
		theCluster = c
		start = time.Now()
		if setupErr = c.Up(ctx); setupErr != nil {
			return
		}
		addTiming("bring-up to node Ready", time.Since(start))
		if setupErr = c.LoadImages(imgs); setupErr != nil {
			return
		}
		setupErr = c.BytecodeLayouts(repoRoot)
	})
	if skipWhy != "" {
		if os.Getenv("BPFMOUNT_E2E") != "" {
			t.Fatalf("BPFMOUNT_E2E is set but: %s", skipWhy)
		}
		t.Skip("skipping: " + skipWhy)
	}
	if setupErr != nil {
		t.Fatalf("cluster bring-up: %v (component logs are in the work directory's logs/ until teardown; set BPFMOUNT_E2E_KEEP_LOGS=1 to keep them)", setupErr)
	}
	return theCluster
}

// releaseImages are the driver and reader images `make image` wrote to
// BPFMOUNT_E2E_IMAGES for BPFMOUNT_E2E_IMAGE_VERSION.
func releaseImages() []kcluster.ReleaseImage {
	dir, ver := os.Getenv("BPFMOUNT_E2E_IMAGES"), os.Getenv("BPFMOUNT_E2E_IMAGE_VERSION")
	if dir == "" {
		dir = filepath.Join(repoRoot, "build", "images")
	}
	if ver == "" {
		ver = "dev"
	}
	return kcluster.ReleaseImages(dir, ver)
}

// waitRegistered waits for the driver's DaemonSet to be ready and the
// driver to be in the node's CSINode.
func (c *cluster) waitRegistered(ctx context.Context, t *testing.T) {
	t.Helper()
	if err := c.WaitDaemonSet(ctx); err != nil {
		t.Fatalf("%v%s", err, c.driverPodEvents(ctx))
	}
	err := poll(ctx, 60*time.Second, func() (bool, error) {
		n, err := c.CS.StorageV1().CSINodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, d := range n.Spec.Drivers {
			if d.Name == "csi.bpfmount.io" {
				return true, nil
			}
		}
		return false, fmt.Errorf("CSINode drivers: %v", n.Spec.Drivers)
	})
	if err != nil {
		t.Fatalf("driver not in the node's CSINode: %v", err)
	}
}

// chartValues are the cluster's values with a policy allowing allowedNS
// to load the local OCI layouts under bytecodeDir (and nobody else
// anything).
func (c *cluster) chartValues(tag string, healthPort int) map[string]any {
	v := c.Values(tag, healthPort)
	v["policy"] = map[string]any{"rules": []any{map[string]any{
		"name":         "e2e",
		"namespaces":   []any{allowedNS},
		"images":       []any{"oci:" + bytecodeDir + "/**"},
		"readOnlyOnly": true,
	}}}
	return v
}

// ---- pods ----

type podOpts struct {
	name, ns, iface, layout string
	reader                  bool // the example reader; else the pause binary
	emptyDir                bool // an emptyDir instead of the bpfmount volume
}

func podSpec(o podOpts) *corev1.Pod {
	vol := corev1.Volume{Name: "bpf"}
	if o.emptyDir {
		vol.VolumeSource = corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
	} else {
		ro := true
		vol.VolumeSource = corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver: "csi.bpfmount.io", ReadOnly: &ro,
			VolumeAttributes: map[string]string{"image": "oci:" + o.layout + ":v1", "interface": o.iface},
		}}
	}
	nonRoot, no, uid, gid := true, false, int64(65534), int64(65534)
	ctr := corev1.Container{
		Name: "main", Image: pauseImage, ImagePullPolicy: corev1.PullNever,
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot: &nonRoot, RunAsUser: &uid, AllowPrivilegeEscalation: &no,
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		VolumeMounts: []corev1.VolumeMount{{Name: "bpf", MountPath: "/run/bpf/counter", ReadOnly: !o.emptyDir}},
	}
	if o.reader {
		ctr.Image = readerImage
		ctr.Command = []string{"/xdp-counter-reader", "--map", "/run/bpf/counter/xdp_stats_map", "--interval", "300ms"}
		ctr.SecurityContext.Capabilities.Add = []corev1.Capability{"BPF"}
	}
	zero := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: o.name, Namespace: o.ns, Labels: map[string]string{"e2e": "bpfmount"}},
		Spec: corev1.PodSpec{
			SecurityContext:               &corev1.PodSecurityContext{FSGroup: &gid},
			Containers:                    []corev1.Container{ctr},
			Volumes:                       []corev1.Volume{vol},
			TerminationGracePeriodSeconds: &zero,
			AutomountServiceAccountToken:  &no,
		},
	}
}

func (c *cluster) createNamespace(ctx context.Context, name string) error {
	_, err := c.CS.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	// The service account admission plugin refuses pods until the
	// namespace's default service account exists.
	return poll(ctx, 60*time.Second, func() (bool, error) {
		_, err := c.CS.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
}

func (c *cluster) waitRunning(ctx context.Context, ns, name string, timeout time.Duration) error {
	return poll(ctx, timeout, func() (bool, error) {
		p, err := c.CS.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if p.Status.Phase == corev1.PodRunning {
			for _, cs := range p.Status.ContainerStatuses {
				if !cs.Ready {
					return false, nil
				}
			}
			return true, nil
		}
		if p.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("pod %s/%s failed: %s", ns, name, p.Status.Message)
		}
		return false, fmt.Errorf("pod %s/%s is %s%s", ns, name, p.Status.Phase, c.podEvents(ctx, ns, name))
	})
}

func (c *cluster) podEvents(ctx context.Context, ns, name string) string {
	evs, err := c.CS.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("involvedObject.name", name).String()})
	if err != nil {
		return ""
	}
	var b strings.Builder
	for _, e := range evs.Items {
		fmt.Fprintf(&b, "\n  %s %s: %s", e.Type, e.Reason, e.Message)
	}
	return b.String()
}

func (c *cluster) deletePod(ctx context.Context, ns, name string) error {
	err := c.CS.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return poll(ctx, 90*time.Second, func() (bool, error) {
		_, err := c.CS.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}

var countsRE = regexp.MustCompile(`packets=(\d+) bytes=(\d+)`)

// packets returns the last packet count the reader logged. The log is read
// from the file kubelet writes (CRI format) rather than through the API:
// the apiserver reaches kubelet at the node's address, and the test's
// kubelet listens on 127.0.0.1 only.
func (c *cluster) packets(ctx context.Context, ns, name string) (uint64, error) {
	p, err := c.CS.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return 0, err
	}
	logs, _ := filepath.Glob(filepath.Join(c.Work, "pod-logs", ns+"_"+name+"_"+string(p.UID), "main", "*.log"))
	if len(logs) == 0 {
		return 0, fmt.Errorf("no log file for %s/%s yet", ns, name)
	}
	sort.Strings(logs)
	b, err := os.ReadFile(logs[len(logs)-1])
	if err != nil {
		return 0, err
	}
	m := countsRE.FindAllStringSubmatch(string(b), -1)
	if len(m) == 0 {
		return 0, fmt.Errorf("no counts in the reader's log: %q", b)
	}
	return strconv.ParseUint(m[len(m)-1][1], 10, 64)
}

// waitPackets waits until the reader logs at least min packets.
func (c *cluster) waitPackets(ctx context.Context, ns, name string, min uint64) (uint64, error) {
	var n uint64
	err := poll(ctx, 20*time.Second, func() (bool, error) {
		var err error
		n, err = c.packets(ctx, ns, name)
		return err == nil && n >= min, err
	})
	if err != nil {
		return n, fmt.Errorf("reader %s/%s logged %d packets, want >= %d: %w", ns, name, n, min, err)
	}
	return n, nil
}

// volumePath is where kubelet mounted a pod's bpfmount volume on the host.
func (c *cluster) volumePath(ctx context.Context, ns, name string) (string, error) {
	p, err := c.CS.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	return filepath.Join(c.KubeletDir, "pods", string(p.UID), "volumes", "kubernetes.io~csi", "bpf", "mount"), nil
}

type timing struct {
	name string
	d    time.Duration
}

func addTiming(name string, d time.Duration) { timings = append(timings, timing{name, d}) }
