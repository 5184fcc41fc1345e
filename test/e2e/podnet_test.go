package e2e

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kcluster "github.com/bpfmount/bpfmount/test/e2e/cluster"

	"github.com/bpfmount/bpfmount/internal/cri"
)

// TestPodOwnInterface: a pod whose volume asks for its own interface
// (interface: pod) counts the frames that reach its eth0, inside its
// network namespace; its sandbox is killed, kubelet makes a new one (a new
// namespace), and the counts go on through the same volume; deleting the
// pod leaves nothing. It installs the chart and uninstalls it again, so
// TestE2E starts from a cluster without it.
func TestPodOwnInterface(t *testing.T) {
	c := setup(t)
	ctx := context.Background()
	if err := c.createNamespace(ctx, allowedNS); err != nil {
		t.Fatal(err)
	}
	if err := c.HelmInstall(ctx, filepath.Join(repoRoot, "charts", "bpfmount"), c.chartValues("v1", freePort())); err != nil {
		t.Fatalf("helm install: %v%s", err, c.driverPodEvents(ctx))
	}
	if err := c.WaitDaemonSet(ctx); err != nil {
		t.Fatalf("%v%s", err, c.driverPodEvents(ctx))
	}
	defer func() {
		if err := c.HelmUninstall(); err != nil {
			t.Errorf("helm uninstall: %v", err)
		}
		err := poll(ctx, 60*time.Second, func() (bool, error) {
			n, err := c.CS.StorageV1().CSINodes().Get(ctx, nodeName, metav1.GetOptions{})
			return err == nil && len(n.Spec.Drivers) == 0, err
		})
		if err != nil {
			t.Errorf("driver still registered after uninstall: %v", err)
		}
	}()

	if _, err := c.CS.CoreV1().Pods(allowedNS).Create(ctx, podSpec(podOpts{name: "own", ns: allowedNS, iface: "pod", layout: counterLayout, reader: true}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Deleted before the chart goes, also when the test fails: TestE2E
	// counts the programs the driver pins.
	defer c.deletePod(ctx, allowedNS, "own")
	if err := c.waitRunning(ctx, allowedNS, "own", 90*time.Second); err != nil {
		t.Fatal(err)
	}
	p, err := c.CS.CoreV1().Pods(allowedNS).Get(ctx, "own", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := cri.Dial(c.Containerd)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	sb, err := rt.PodSandbox(ctx, string(p.UID))
	if err != nil {
		t.Fatal(err)
	}
	// Frames reach the pod's eth0 through the pods' bridge; none of the
	// node's interfaces carries the program. The attach follows the
	// sandbox's start by up to a poll (2 s): send until they are counted.
	n0, err := c.waitPackets(ctx, allowedNS, "own", 0)
	if err != nil {
		t.Fatal(err)
	}
	n1, err := c.countedAfterSending(ctx, "own", n0)
	if err != nil {
		t.Fatalf("no counts in sandbox %s (%s): %v%s", sb.ID, sb.Netns, err, c.podEvents(ctx, allowedNS, "own"))
	}
	t.Logf("counts %d -> %d with frames sent to the pod (sandbox %s, %s)", n0, n1, sb.ID, sb.Netns)

	// The sandbox dies: kubelet makes a new one, with a new namespace,
	// and restarts the reader; the volume stays mounted.
	if err := c.Ctr("task", "kill", "-s", "SIGKILL", sb.ID); err != nil {
		t.Fatal(err)
	}
	var next *cri.Sandbox
	err = poll(ctx, 90*time.Second, func() (bool, error) {
		s, err := rt.PodSandbox(ctx, string(p.UID))
		if err != nil || s.ID == sb.ID {
			return false, nil
		}
		next = s
		return c.waitRunning(ctx, allowedNS, "own", time.Second) == nil, nil
	})
	if err != nil {
		t.Fatalf("no new sandbox after the old one was killed: %v%s", err, c.podEvents(ctx, allowedNS, "own"))
	}
	// The restarted reader reads the same map: the counts go on from n1.
	n2, err := c.waitPackets(ctx, allowedNS, "own", n1)
	if err != nil {
		t.Fatal(err)
	}
	n3, err := c.countedAfterSending(ctx, "own", n2)
	if err != nil {
		t.Fatalf("no counts in the new sandbox %s (%s): %v%s", next.ID, next.Netns, err, c.podEvents(ctx, allowedNS, "own"))
	}
	t.Logf("counts %d -> %d in the new sandbox %s (%s)", n2, n3, next.ID, next.Netns)

	if err := c.deletePod(ctx, allowedNS, "own"); err != nil {
		t.Fatal(err)
	}
	c.waitDriverClean(ctx, t, "after the pod went")
}

// countedAfterSending sends frames to the pods until the reader of pod name
// logs 200 more than from; it returns the count it logged.
func (c *cluster) countedAfterSending(ctx context.Context, name string, from uint64) (uint64, error) {
	var n uint64
	err := poll(ctx, 30*time.Second, func() (bool, error) {
		if err := sendToPods(200); err != nil {
			return false, err
		}
		time.Sleep(500 * time.Millisecond) // the reader logs every 300 ms
		var err error
		n, err = c.packets(ctx, allowedNS, name)
		return err == nil && n >= from+200, nil
	})
	return n, err
}

// sendToPods sends n broadcast frames of an experimental EtherType on the
// pods' bridge: every pod's eth0 receives them, and no stack answers.
func sendToPods(n int) error {
	ifc, err := net.InterfaceByName(kcluster.BridgeName)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	addr := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6}
	copy(addr.Addr[:], bcast)
	frame := make([]byte, 64)
	copy(frame[0:6], bcast)
	copy(frame[6:12], net.HardwareAddr{0x02, 0, 0, 0, 0xe2, 0xe0})
	frame[12], frame[13] = 0x88, 0xb5
	for i := 0; i < n; i++ {
		if err := unix.Sendto(fd, frame, 0, addr); err != nil {
			return fmt.Errorf("sending frame %d on %s: %w", i, kcluster.BridgeName, err)
		}
	}
	return nil
}
