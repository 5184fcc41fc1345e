package crash

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

// TestTrafficContinuesAcrossKill sends numbered frames without pause while
// the daemon is killed with SIGKILL and started again: the program, held by
// its pinned link, must see every frame in order.
func TestTrafficContinuesAcrossKill(t *testing.T) {
	p := testenv.NewProcDaemon(t, bin(t))
	v := testenv.NewVeth(t)
	img := testenv.Layout(t, testenv.XDPSeqObject, "v1")
	target := filepath.Join(testenv.ShortTempDir(t), "vol")
	p.Start(t)
	if _, err := p.Node.NodePublishVolume(context.Background(), publishReq("vol-seq", target, img, v.Host)); err != nil {
		t.Fatal(err)
	}
	id := testenv.XDPProgram(t, v.Host)

	// Small paced batches: veth's XDP ring holds 256 frames.
	send := v.StartSeq(t, 20, 64, time.Millisecond)
	send.WaitSent(t, 500)
	p.Kill()
	send.WaitSent(t, send.Sent()+500) // frames flow with no daemon at all
	p.Start(t)
	send.WaitSent(t, send.Sent()+500)
	if err := send.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the last frames drain

	if got := testenv.XDPProgram(t, v.Host); got != id {
		t.Fatalf("XDP program changed from %d to %d across the restart", id, got)
	}
	count, gaps := seqSeen(t, target)
	if gaps != 0 || count != uint64(send.Sent()) {
		t.Fatalf("sent %d frames; the program saw %d with %d gaps", send.Sent(), count, gaps)
	}
	t.Logf("%d frames, no gap, across kill -9 and restart", count)

	if _, err := p.Node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-seq", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	testenv.AssertClean(t, p.StateDir, p.BPFFSRoot, v, target)
}
