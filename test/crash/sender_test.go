package crash

import (
	"encoding/binary"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

// seqSender sends numbered frames (for the xdp_seq program) from a veth's
// peer in small paced batches until halted: veth's XDP ring holds 256
// frames, and a frame the ring drops would count as a gap.
type seqSender struct {
	sent atomic.Uint32
	stop chan struct{}
	wg   sync.WaitGroup
	err  error
}

func startSeqSender(v *testenv.Veth) *seqSender {
	s := &seqSender{stop: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			select {
			case <-s.stop:
				return
			default:
			}
			if err := v.SendSeq(s.sent.Load(), 20, 64); err != nil {
				s.err = err
				return
			}
			s.sent.Add(20)
			time.Sleep(time.Millisecond)
		}
	}()
	return s
}

// waitFor waits until n frames more than now have been sent.
func (s *seqSender) waitFor(t *testing.T, n uint32) {
	t.Helper()
	want := s.sent.Load() + n
	for deadline := time.Now().Add(60 * time.Second); s.sent.Load() < want; {
		if time.Now().After(deadline) {
			t.Fatalf("sender stuck at %d frames (err %v)", s.sent.Load(), s.err)
		}
		time.Sleep(time.Millisecond)
	}
}

// halt stops sending, lets the last frames drain, and returns how many
// frames were sent.
func (s *seqSender) halt(t *testing.T) uint32 {
	t.Helper()
	close(s.stop)
	s.wg.Wait()
	if s.err != nil {
		t.Fatal(s.err)
	}
	time.Sleep(100 * time.Millisecond)
	return s.sent.Load()
}

// seqSeen reads an xdp_seq program's seq_map through a volume: how many
// numbered frames it saw, and how many times a number did not follow the
// previous one.
func seqSeen(t *testing.T, target string) (count, gaps uint64) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(target, "seq_map"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var val [24]byte
	if err := m.Lookup(uint32(0), &val); err != nil {
		t.Fatal(err)
	}
	return binary.NativeEndian.Uint64(val[0:8]), binary.NativeEndian.Uint64(val[8:16])
}
