package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Down stops everything and puts the machine back as it was. It reports
// what it could not undo. After an Up that refused to start (another
// cluster there), it does nothing.
func (c *Cluster) Down() []error {
	if !c.touched {
		return nil
	}
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// Pods first, while kubelet runs, so that volumes are unpublished,
	// containers stopped and CNI torn down the ordinary way.
	if c.CS != nil && c.running("kubelet") {
		c.deleteAllPods(ctx)
	}
	stop := func(name string) {
		if p := c.proc(name); p != nil {
			if err := p.stop(15 * time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, name := range []string{"kubelet", "kube-scheduler", "kube-controller-manager"} {
		stop(name)
	}
	// Whatever is still running in containerd (a pod kubelet could not
	// stop): kill its tasks, then the sandboxes' shims.
	if c.running("containerd") {
		if out, err := c.ctrOutput("tasks", "ls", "-q"); err == nil {
			for _, id := range strings.Fields(out) {
				c.Ctr("tasks", "kill", "-s", "SIGKILL", id)
				time.Sleep(100 * time.Millisecond)
				c.Ctr("tasks", "rm", "-f", id)
			}
		}
	}
	stop("containerd")
	errs = append(errs, c.killShims()...)
	for _, name := range []string{"kube-apiserver", "etcd"} {
		stop(name)
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
	prefixes := []string{c.Work, c.Run, "/run/bpfmount", "/sys/fs/bpf/bpfmount"}
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
	for _, p := range c.hostPaths {
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
		exec.Command("cp", "-r", filepath.Join(c.Work, "logs"), logs).Run()
		c.log("logs kept in %s", logs)
	}
	if err := os.RemoveAll(c.Work); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(c.Run); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 && c.detach {
		// What could not be undone stays on record, so that another
		// `make cluster-down` retries it. The processes are stopped: none
		// is left to check or to stop.
		c.procs = nil
		if err := os.MkdirAll(c.Work, 0o755); err == nil {
			if err := c.Save(); err == nil {
				errs = append(errs, fmt.Errorf("the state stays in %s: `make cluster-down` again retries what failed (remove the file once the machine is clean)", StatePath(c.Work)))
			}
		}
	}
	return errs
}

// killShims stops containerd-shim processes serving the test's containerd
// (found by their -address argument), by pid.
func (c *Cluster) killShims() []error {
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
		if indexOf(args, c.Containerd) < 0 {
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
func (c *Cluster) deleteAllPods(ctx context.Context) {
	waitGone := func(keep func(corev1.Pod) bool) {
		for ctx.Err() == nil {
			pods, err := c.CS.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
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
	isDriver := func(p corev1.Pod) bool { return p.Namespace == ReleaseNS }
	pods, err := c.CS.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for _, p := range pods.Items {
		if !isDriver(p) {
			c.CS.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{})
		}
	}
	waitGone(isDriver)
	nss, err := c.CS.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for _, ns := range nss.Items {
		c.CS.AppsV1().DaemonSets(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		c.CS.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	}
	waitGone(func(corev1.Pod) bool { return false })
}
