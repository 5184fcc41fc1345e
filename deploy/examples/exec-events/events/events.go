// Package events reads the example's exec events from the ring buffer a
// bpfmount volume mounts into the container.
package events

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/bpfmount/bpfmount/deploy/examples/exec-events/bpf"
)

// Event is one exec.
type Event struct {
	PID      uint32 `json:"pid"`
	UID      uint32 `json:"uid"`
	Comm     string `json:"comm"`
	Filename string `json:"filename"`
}

// Reader reads events from a pinned ring buffer.
type Reader struct {
	m  *ebpf.Map
	rd *ringbuf.Reader
}

// Open opens the pinned ring buffer at path (the events map in the
// volume). Reading moves the ring's consumer position, which the reader
// writes: the volume must not be read-only.
func Open(path string) (*Reader, error) {
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("reading %s as a ring buffer: %w", path, err)
	}
	return &Reader{m: m, rd: rd}, nil
}

// ErrTimeout is returned by Next when no event came within the deadline.
var ErrTimeout = errors.New("no event before the deadline")

// Next waits for the next event; a zero deadline waits forever.
func (r *Reader) Next(deadline time.Time) (Event, error) {
	r.rd.SetDeadline(deadline)
	rec, err := r.rd.Read()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return Event{}, ErrTimeout
	}
	if err != nil {
		return Event{}, err
	}
	var raw bpf.ExeceventsEvent
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
		return Event{}, fmt.Errorf("decoding an event of %d bytes: %w", len(rec.RawSample), err)
	}
	return Event{PID: raw.Pid, UID: raw.Uid, Comm: cString(raw.Comm[:]), Filename: cString(raw.Filename[:])}, nil
}

// Close releases the ring buffer.
func (r *Reader) Close() error {
	return errors.Join(r.rd.Close(), r.m.Close())
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}
