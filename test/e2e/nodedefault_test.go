package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bpfmount/bpfmount/internal/defaultroute"
	"github.com/bpfmount/bpfmount/internal/testenv"
)

// A pod whose volume asks for interface: node:default gets the XDP
// counter on the interface of the node's default route (the host's: the
// cluster's node is this machine), in skb mode so that the machine's own
// link is never reset: the driver's record of the volume names the
// interface it resolved to, the reader's counts rise with frames that
// arrive on it (the answers of the default gateway to connections the test
// opens), and deleting the pod detaches and leaves nothing.
func TestNodeDefaultInterface(t *testing.T) {
	c := setup(t)
	ctx := context.Background()
	const ns, pod = "e2e-nodedefault", "node-default"
	ifname, err := defaultroute.Interface(nil)
	if err != nil {
		t.Skipf("this machine has no default route to count on: %v", err)
	}
	if prog := testenv.XDPProgram(t, ifname); prog != 0 {
		t.Skipf("%s already carries XDP program %d: not the test's to replace", ifname, prog)
	}
	gw, err := defaultGateway(ifname)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.createNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	// The rule grants the resolved name only: the policy sees it, never
	// node:default.
	c.installScenarioChart(t, map[string]any{
		"name":         "node-default",
		"namespaces":   []any{ns},
		"images":       []any{"oci:" + bytecodeDir + "/**"},
		"interfaces":   []any{ifname},
		"readOnlyOnly": true,
	})
	c.deletePodsAtEnd(t, ns, pod)

	p := podSpec(podOpts{name: pod, ns: ns, iface: "node:default", layout: counterLayout, reader: true})
	p.Spec.Volumes[0].CSI.VolumeAttributes["xdpMode"] = "skb"
	if _, err := c.CS.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.waitRunning(ctx, ns, pod, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	if testenv.XDPProgram(t, ifname) == 0 {
		t.Fatalf("no XDP program on %s, the default route's interface", ifname)
	}
	rec := volumeRecord(t, c.podUID(t, ns, pod))
	if rec.Identity.Interface != ifname || rec.Attributes["interface"] != "node:default" {
		t.Fatalf("the volume's record: interface %q (asked %q), want %q resolved from node:default", rec.Identity.Interface, rec.Attributes["interface"], ifname)
	}

	// Each connection to the gateway's port 80 brings back frames on the
	// interface (the answer or a reset), whatever else the node receives.
	n0, err := c.waitPackets(ctx, ns, pod, 0)
	if err != nil {
		t.Fatal(err)
	}
	var n1 uint64
	err = poll(ctx, 30*time.Second, func() (bool, error) {
		for i := 0; i < 20; i++ {
			if conn, err := net.DialTimeout("tcp", net.JoinHostPort(gw.String(), "80"), 200*time.Millisecond); err == nil {
				conn.Close()
			}
		}
		time.Sleep(500 * time.Millisecond) // the reader logs every 300 ms
		n1, _ = c.packets(ctx, ns, pod)
		return n1 >= n0+20, nil
	})
	if err != nil {
		t.Fatalf("counts %d -> %d on %s after connections to %s: %v", n0, n1, ifname, gw, err)
	}
	t.Logf("node:default resolved to %s; counts %d -> %d", ifname, n0, n1)

	if err := c.deletePod(ctx, ns, pod); err != nil {
		t.Fatal(err)
	}
	if err := waitDetached(t, ifname); err != nil {
		t.Fatal(err)
	}
	c.waitDriverClean(ctx, t, "after the pod went")
}

type volumeRec struct {
	Attributes map[string]string `json:"attributes"`
	Identity   struct {
		Interface string `json:"interface"`
	} `json:"identity"`
	Pod struct {
		UID string `json:"uid"`
	} `json:"pod"`
}

// volumeRecord is the driver's record (its state directory, a host path)
// of the volume of the pod with uid.
func volumeRecord(t *testing.T, uid string) volumeRec {
	t.Helper()
	files, _ := filepath.Glob("/run/bpfmount/volumes/*.json")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var r volumeRec
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if r.Pod.UID == uid {
			return r
		}
	}
	t.Fatalf("no record of pod %s's volume among %v", uid, files)
	return volumeRec{}
}

// defaultGateway is the gateway of the IPv4 default route through ifname.
func defaultGateway(ifname string) (net.IP, error) {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fl := strings.Fields(s.Text())
		if len(fl) < 3 || fl[0] != ifname || fl[1] != "00000000" {
			continue
		}
		b, err := hex.DecodeString(fl[2])
		if err != nil || len(b) != 4 {
			continue
		}
		ip := make(net.IP, 4)
		binary.BigEndian.PutUint32(ip, binary.LittleEndian.Uint32(b))
		if !ip.Equal(net.IPv4zero) {
			return ip, nil
		}
	}
	return nil, fmt.Errorf("no IPv4 gateway of a default route through %s", ifname)
}
