package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bpfmount/bpfmount/internal/cgrouppath"
	kcluster "github.com/bpfmount/bpfmount/test/e2e/cluster"
)

// A pod with a cgroup_skb egress counter (count_skb of the cgroup hooks
// test programs) on its own cgroup, which kubelet made (cgroupfs driver,
// the cluster's cgroup root; the driver finds it through the chart's
// kubeletCgroupRoot): the program is attached to exactly that cgroup, the
// count rises by at least N when the pod answers N requests, and not at
// all when another pod answers. Deleting the pod detaches and unloads the
// program and leaves nothing behind.
func TestCgroupSKBOwnTraffic(t *testing.T) {
	c := setup(t)
	ctx := context.Background()
	const ns, counted, other = "e2e-cgroup", "cg-counted", "cg-other"
	if err := c.createNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	c.installScenarioChart(t, map[string]any{
		"name":         "own-egress",
		"namespaces":   []any{ns},
		"images":       []any{"oci:" + bytecodeDir + "/**"},
		"hooks":        []any{"cgroup_skb"},
		"readOnlyOnly": true,
	})
	c.deletePodsAtEnd(t, ns, counted, other)

	for _, p := range []*corev1.Pod{httpPod(ns, counted, true), httpPod(ns, other, false)} {
		if _, err := c.CS.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{counted, other} {
		if err := c.waitRunning(ctx, ns, n, 90*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	progs := driverPrograms(t, ebpf.CGroupSKB)
	if len(progs) != 1 {
		t.Fatalf("%d cgroup_skb programs pinned by the driver, want 1: %v", len(progs), progs)
	}
	// Attached to the pod's own cgroup, in the cgroup2 hierarchy, and
	// nowhere above it (kubelet's cgroup root).
	cg := c.podCgroup(t, ns, counted)
	if got := cgroupEgress(t, cg); !slices.Equal(got, progs) {
		t.Fatalf("cgroup_skb egress programs on the pod's cgroup %s: %v, want %v", cg, got, progs)
	}
	if got := cgroupEgress(t, filepath.Dir(cg)); len(got) != 0 {
		t.Fatalf("cgroup_skb egress programs on %s, above the pod: %v, want none", filepath.Dir(cg), got)
	}
	count := c.openHits(t, ns, counted)

	countedNS, otherNS := c.podNetns(t, ns, counted), c.podNetns(t, ns, other)
	for _, netns := range []string{countedNS, otherNS} {
		if err := waitServing(netns); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second) // the last packets of those first connections are out

	const n = 50
	n0 := count()
	if err := httpRequests(countedNS, n); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the pod's last packets (ACKs of the client's FINs) are out
	n1 := count()
	if n1 < n0+n {
		t.Fatalf("after the pod answered %d requests its egress count went %d -> %d, want a rise of at least %d", n, n0, n1, n)
	}
	if err := httpRequests(otherNS, n); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the other pod's last packets (FIN, ACK) are out
	if n2 := count(); n2 != n1 {
		t.Fatalf("another pod's %d answers changed the count %d -> %d", n, n1, n2)
	}
	t.Logf("egress count %d -> %d after %d answers of the pod; unchanged by %d answers of another pod", n0, n1, n, n)

	if err := c.deletePod(ctx, ns, counted); err != nil {
		t.Fatal(err)
	}
	c.waitNothingLeft(t, progs)
}

// httpPod runs the XDP counter's reader as a small HTTP server on port
// 8080 (its map is missing, so every answer is an error; an answer is all
// the test needs), non-root with CAP_BPF only (the image's binary carries
// it as a file capability: without it in the container's bounding set
// the exec is refused). With counted, a
// bpfmount volume puts count_skb on the pod's egress; else an emptyDir
// stands in.
func httpPod(ns, name string, counted bool) *corev1.Pod {
	p := podSpec(podOpts{name: name, ns: ns, emptyDir: !counted})
	if counted {
		p.Spec.Volumes[0].CSI.VolumeAttributes = map[string]string{
			"image": "oci:" + kcluster.CgroupLayout + ":v1", "program": "count_skb", "type": "cgroup_skb", "direction": "egress",
		}
	}
	ctr := &p.Spec.Containers[0]
	ctr.Image = readerImage
	ctr.Command = []string{"/xdp-counter-reader", "--map", "/run/bpf/counter/none", "--listen", ":8080", "--interval", "1h"}
	ctr.SecurityContext.Capabilities.Add = []corev1.Capability{"BPF"}
	return p
}

// podCgroup is the pod's cgroup in the cgroup2 hierarchy, where the
// driver looks for it (the chart's cgroupRoot and kubeletCgroupRoot).
func (c *cluster) podCgroup(t *testing.T, ns, name string) string {
	t.Helper()
	p, err := c.CS.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v := c.Values("v1", 0)
	cg, err := cgrouppath.Finder{Root: cgrouppath.DefaultRoot, KubeletRoot: v["kubeletCgroupRoot"].(string)}.Find(string(p.UID))
	if err != nil {
		t.Fatal(err)
	}
	return cg
}

// cgroupEgress lists the cgroup_skb egress programs attached to cgroup
// dir itself.
func cgroupEgress(t *testing.T, dir string) []ebpf.ProgramID {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupInetEgress})
	if err != nil {
		t.Fatalf("querying the programs on %s: %v", dir, err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

// podNetns is the network namespace of the pod's processes, found through
// its cgroup.
func (c *cluster) podNetns(t *testing.T, ns, name string) string {
	t.Helper()
	var pid string
	filepath.WalkDir(c.podCgroup(t, ns, name), func(p string, d os.DirEntry, err error) error {
		if err != nil || pid != "" || d.Name() != "cgroup.procs" {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		if s := bufio.NewScanner(f); s.Scan() {
			pid = s.Text()
		}
		return nil
	})
	if _, err := strconv.Atoi(pid); err != nil {
		t.Fatalf("no process of pod %s/%s in its cgroup", ns, name)
	}
	return "/proc/" + pid + "/ns/net"
}

// openHits opens count_skb's hits map through the pod's volume (as the
// pod would) and returns a reader of its count.
func (c *cluster) openHits(t *testing.T, ns, name string) func() uint64 {
	t.Helper()
	vol, err := c.volumePath(context.Background(), ns, name)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(vol, "hits"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("opening hits through the pod's volume: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return func() uint64 {
		var v uint64
		if err := m.Lookup(uint32(0), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// httpRequests makes n HTTP requests to port 8080 of the pod whose network
// namespace is netnsPath, each on a connection of its own to 127.0.0.1, so
// that the pod's server answers each in at least one packet of its own.
// The client's sockets are the test's (its cgroup, not the pod's).
func httpRequests(netnsPath string, n int) error {
	for i := 0; i < n; i++ {
		conn, err := dialIn(netnsPath, "127.0.0.1:8080")
		if err != nil {
			return err
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n")
		var resp []byte
		if err == nil {
			resp, err = io.ReadAll(conn)
		}
		conn.Close()
		if err != nil {
			return fmt.Errorf("request %d to the pod: %w", i, err)
		}
		if !strings.HasPrefix(string(resp), "HTTP/1.") {
			return fmt.Errorf("request %d to the pod: answer %.80q", i, resp)
		}
	}
	return nil
}

// waitServing waits until the pod's server accepts connections: the pod
// is Ready as soon as its container started (no probe can reach it from
// the host: the pods' bridge has no address there).
func waitServing(netnsPath string) error {
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		var conn net.Conn
		if conn, err = dialIn(netnsPath, "127.0.0.1:8080"); err == nil {
			return conn.Close()
		}
	}
	return fmt.Errorf("no server on port 8080 in %s: %w", netnsPath, err)
}

// dialIn connects from inside the network namespace at netnsPath: the
// socket is made on a thread in that namespace, and keeps it. The thread
// goes back to the test's namespace before it is unlocked. It must not
// end instead: the cluster's processes were started with a parent death
// signal, which the kernel sends when the thread that forked them exits,
// and the runtime reuses threads.
func dialIn(netnsPath, addr string) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer orig.Close()
		target, err := os.Open(netnsPath)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("entering %s: %w", netnsPath, err)}
			return
		}
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if serr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); serr != nil {
			if conn != nil {
				conn.Close()
			}
			ch <- result{nil, fmt.Errorf("returning from %s: %w", netnsPath, serr)}
			select {} // the thread stays locked, in the pod's namespace, unused
		}
		runtime.UnlockOSThread()
		ch <- result{conn, err}
	}()
	r := <-ch
	return r.conn, r.err
}
