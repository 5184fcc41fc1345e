package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

// TestStress: 16 goroutines each make 500 random publish and unpublish calls
// over 4 interfaces, with requests that overlap (identical ones share a
// program, conflicting XDP ones collide). Only the documented errors may
// come back, and the node must be clean at the end. `make test` runs it
// under -race. BPFMOUNT_TEST_STRESS_CALLS lowers the calls per goroutine
// where the machine is slow (software-emulated VMs: `make test-vm`).
func TestStress(t *testing.T) {
	const goroutines, slots = 16, 4
	calls := 500
	if testing.Short() {
		t.Skip("skipping the stress test in -short mode")
	}
	if s := os.Getenv("BPFMOUNT_TEST_STRESS_CALLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 8 {
			t.Fatalf("BPFMOUNT_TEST_STRESS_CALLS=%q: want a number of calls per goroutine, at least 8", s)
		}
		calls = n
	}
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	xdp := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	tcx := testenv.Layout(t, testenv.TCXOrderObject, "v1")
	var veths []*testenv.Veth
	for i := 0; i < 4; i++ {
		veths = append(veths, testenv.NewVeth(t))
	}
	dir := testenv.ShortTempDir(t)

	// The request menu per interface: two XDP variants that conflict with
	// each other, and tcx programs at two priorities.
	menu := func(ifname string, n int) map[string]string {
		switch n {
		case 0:
			return map[string]string{"image": xdp, "interface": ifname}
		case 1:
			return map[string]string{"image": xdp, "interface": ifname, "xdpMode": "skb"}
		case 2:
			return map[string]string{"image": tcx, "interface": ifname, "type": "tcx", "direction": "ingress", "priority": "10", "globals": "order_id=01000000"}
		default:
			return map[string]string{"image": tcx, "interface": ifname, "type": "tcx", "direction": "ingress", "priority": "20", "globals": "order_id=02000000"}
		}
	}
	type slot struct {
		published bool
		attrs     map[string]string
	}
	xdpConflict := "already runs XDP program"
	if d.Loader.CanChain() {
		xdpConflict = "cannot join it"
	}
	var mu sync.Mutex
	unexpected := map[string]int{}
	codesSeen := map[codes.Code]int{}
	record := func(op string, err error, allowed ...codes.Code) {
		c := status.Code(err)
		mu.Lock()
		defer mu.Unlock()
		codesSeen[c]++
		if c == codes.OK {
			return
		}
		for _, a := range allowed {
			// The only precondition that may fail is the other XDP
			// variant: holding the interface alone (lone-program path),
			// or having put the dispatcher in a mode this one refuses.
			if c == a && (c != codes.FailedPrecondition || strings.Contains(status.Convert(err).Message(), xdpConflict)) {
				return
			}
		}
		unexpected[fmt.Sprintf("%s: %v", op, err)]++
	}

	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 42))
			state := make([]slot, slots)
			ctx := context.Background()
			for i := 0; i < calls; i++ {
				s := rng.IntN(slots)
				vol := fmt.Sprintf("g%02d-s%d", g, s)
				target := filepath.Join(dir, vol)
				st := &state[s]
				switch {
				case st.published && rng.IntN(10) < 6:
					_, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(vol, target))
					record("unpublish", err)
					if err == nil {
						st.published = false
					}
				case st.published && rng.IntN(2) == 0:
					_, err := d.Node.NodePublishVolume(ctx, publishReq(vol, target, st.attrs, false))
					record("republish", err)
				case st.published:
					other := menu(veths[rng.IntN(4)].Host, rng.IntN(4))
					_, err := d.Node.NodePublishVolume(ctx, publishReq(vol, target, other, false))
					record("conflicting publish", err, codes.AlreadyExists)
				default:
					attrs := menu(veths[rng.IntN(4)].Host, rng.IntN(4))
					_, err := d.Node.NodePublishVolume(ctx, publishReq(vol, target, attrs, false))
					// Another XDP variant may hold the interface.
					record("publish", err, codes.FailedPrecondition)
					if err == nil {
						st.published, st.attrs = true, attrs
					}
				}
			}
			for s := range state {
				if state[s].published {
					vol := fmt.Sprintf("g%02d-s%d", g, s)
					_, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq(vol, filepath.Join(dir, vol)))
					record("final unpublish", err)
				}
			}
		}(g)
	}
	wg.Wait()
	for msg, n := range unexpected {
		t.Errorf("%d× unexpected: %s", n, msg)
	}
	t.Logf("codes: %v", codesSeen)
	if codesSeen[codes.OK] < goroutines*calls/4 {
		t.Errorf("only %d calls succeeded; the test is not exercising the driver", codesSeen[codes.OK])
	}
	for _, v := range veths {
		d.AssertClean(t, v)
	}
	if m := testenv.MountsUnder(t, dir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
}
