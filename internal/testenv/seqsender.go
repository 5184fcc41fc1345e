package testenv

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// SeqSender keeps numbered frames flowing from a veth's peer to its host
// end while a test disturbs the daemon (a kill, an upgrade), counting what
// it sent so the test can compare with what the program saw.
type SeqSender struct {
	sent atomic.Uint32
	stop chan struct{}
	done chan struct{}
	once sync.Once
	err  error
}

// StartSeq sends batches of batch frames of size bytes, numbered from 0,
// with pause between batches, until Stop or the end of the test. Keep
// batches small: veth's XDP ring holds 256 frames.
func (v *Veth) StartSeq(t testing.TB, batch, size int, pause time.Duration) *SeqSender {
	s := &SeqSender{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			default:
			}
			if err := v.SendSeq(s.sent.Load(), batch, size); err != nil {
				s.err = err
				return
			}
			s.sent.Add(uint32(batch))
			time.Sleep(pause)
		}
	}()
	t.Cleanup(func() { s.Stop() })
	return s
}

// Sent is the number of frames sent so far.
func (s *SeqSender) Sent() uint32 { return s.sent.Load() }

// WaitSent waits until at least n frames were sent; it fails the test when
// sending failed or stalled for 10 s.
func (s *SeqSender) WaitSent(t testing.TB, n uint32) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); s.sent.Load() < n; {
		select {
		case <-s.done:
			if s.sent.Load() < n {
				t.Fatalf("sender stopped at %d frames: %v", s.sent.Load(), s.err)
			}
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sender stuck at %d frames", s.sent.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

// Stop stops sending, waits for the batch in flight, and returns the first
// send error. It may be called more than once.
func (s *SeqSender) Stop() error {
	s.once.Do(func() { close(s.stop) })
	<-s.done
	return s.err
}
