package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

// TestPodStartBench prints pod start latency (create to Ready) with a
// bpfmount volume against the same pod with an emptyDir: 20 pods each, one
// at a time, the two kinds alternating so that load on the machine hits
// both alike. Not gated: it only reports. Runs with BPFMOUNT_E2E_BENCH=1.
func TestPodStartBench(t *testing.T) {
	if os.Getenv("BPFMOUNT_E2E_BENCH") == "" {
		t.Skip("skipping: set BPFMOUNT_E2E_BENCH=1 to measure pod start latency")
	}
	c := setup(t)
	ctx := context.Background()
	const n = 20
	veth := testenv.NewVeth(t)
	if err := c.createNamespace(ctx, allowedNS); err != nil {
		t.Fatal(err)
	}
	if err := c.HelmInstall(ctx, filepath.Join(repoRoot, "charts", "bpfmount"), c.chartValues("v1", freePort())); err != nil {
		t.Fatalf("helm install: %v", err)
	}
	if err := c.WaitDaemonSet(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.HelmUninstall(); err != nil {
			t.Errorf("helm uninstall: %v", err)
		}
	}()
	var withVol, withEmpty []time.Duration
	for i := 0; i < 2*n; i++ {
		empty := i%2 == 0
		name := fmt.Sprintf("bench-%d", i)
		d, err := c.timePodStart(ctx, podSpec(podOpts{name: name, ns: allowedNS, iface: veth.Host, layout: counterLayout, emptyDir: empty}))
		if err != nil {
			t.Fatal(err)
		}
		if empty {
			withEmpty = append(withEmpty, d)
		} else {
			withVol = append(withVol, d)
		}
		if err := c.deletePod(ctx, allowedNS, name); err != nil {
			t.Fatal(err)
		}
	}
	p := func(ds []time.Duration, q float64) time.Duration {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		i := int(q*float64(len(s))+0.5) - 1
		if i < 0 {
			i = 0
		}
		if i >= len(s) {
			i = len(s) - 1
		}
		return s[i]
	}
	v50, v99, e50, e99 := p(withVol, .5), p(withVol, .99), p(withEmpty, .5), p(withEmpty, .99)
	fmt.Printf("e2e bench: pod start (create to Ready), %d pods each\n", n)
	fmt.Printf("  bpfmount volume: p50 %v  p99 %v\n", v50.Round(time.Millisecond), v99.Round(time.Millisecond))
	fmt.Printf("  emptyDir:        p50 %v  p99 %v\n", e50.Round(time.Millisecond), e99.Round(time.Millisecond))
	fmt.Printf("  ratio:           p50 %.2f  p99 %.2f\n", float64(v50)/float64(e50), float64(v99)/float64(e99))
}

// timePodStart creates a pod and returns how long until it is Ready,
// polling every 10ms.
func (c *cluster) timePodStart(ctx context.Context, pod *corev1.Pod) (time.Duration, error) {
	start := time.Now()
	if _, err := c.CS.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return 0, err
	}
	for time.Since(start) < 60*time.Second {
		p, err := c.CS.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err == nil {
			for _, cond := range p.Status.Conditions {
				if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
					return time.Since(start), nil
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0, fmt.Errorf("pod %s not Ready after 60s%s", pod.Name, c.podEvents(ctx, pod.Namespace, pod.Name))
}
