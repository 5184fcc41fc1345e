package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// K8sVersion is the Kubernetes the cluster runs (test/e2e/build-k8s.sh
// builds it into the bin directory).
const K8sVersion = "v1.34.4"

// Missing returns why a cluster cannot run on this machine with the
// Kubernetes binaries in bin, or "".
func Missing(bin string) string {
	if os.Geteuid() != 0 {
		return "the cluster runs kubelet, containerd and eBPF programs, which needs root"
	}
	if b, _ := os.ReadFile(filepath.Join(bin, "k8s-version")); strings.TrimSpace(string(b)) != K8sVersion {
		return fmt.Sprintf("Kubernetes %s binaries not built in %s (run test/e2e/build-k8s.sh)", K8sVersion, bin)
	}
	for _, p := range []string{"etcd", "containerd", "ctr", "runc", "containerd-shim-runc-v2", "iptables-save", "ip"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Sprintf("%s not found (apt-get install etcd-server containerd runc containernetworking-plugins iproute2 iptables)", p)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		return "CNI plugins not in /usr/lib/cni (apt-get install containernetworking-plugins)"
	}
	return ""
}

// Poll calls f every 100 ms until it returns true or timeout passes; the
// error then carries f's last error.
func Poll(ctx context.Context, timeout time.Duration, f func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var lastErr error
	for {
		ok, err := f()
		if ok {
			return nil
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("timed out after %v: %w", timeout, lastErr)
			}
			return fmt.Errorf("timed out after %v", timeout)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitDaemonSet waits until the driver's DaemonSet has rolled out: one
// updated pod, ready, on the node.
func (c *Cluster) WaitDaemonSet(ctx context.Context) error {
	return Poll(ctx, 3*time.Minute, func() (bool, error) {
		ds, err := c.CS.AppsV1().DaemonSets(ReleaseNS).Get(ctx, ReleaseName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		st := ds.Status
		ok := st.ObservedGeneration == ds.Generation && st.DesiredNumberScheduled == 1 &&
			st.UpdatedNumberScheduled == 1 && st.NumberReady == 1 && st.NumberAvailable == 1 && st.NumberUnavailable == 0
		return ok, fmt.Errorf("DaemonSet status %+v", st)
	})
}
