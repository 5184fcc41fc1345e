package driver

import (
	"encoding/json"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/loader"
)

// A volume whose program attaches later (a pod's own interface) tells the
// pod where it stands through a map in the volume, loader.StatusMap
// ("bpfmount_status"): a one-entry array whose value at key 0 is a JSON
// object, NUL-padded to loader.StatusSize bytes. A map rather than a file:
// bpffs holds no regular files, and a read-only volume's bpffs is sealed
// read-only, while a map's value changes through the driver's descriptor.

// Attach states of a deferred volume.
const (
	stateWaiting  = "waiting"  // loaded; the pod's sandbox (or its network) is not there yet
	stateAttached = "attached" // attached in the pod's current sandbox
	stateFailed   = "failed"   // cannot attach; reason says why (the driver keeps trying unless it cannot succeed)
)

// maxStatusReason bounds the reason in a status, so the whole object fits
// the map's value with room for the namespace path.
const maxStatusReason = 160

// podnetStatus is the JSON in a volume's status map.
type podnetStatus struct {
	State     string `json:"state"`
	Interface string `json:"interface,omitempty"`
	Netns     string `json:"netns,omitempty"`
	Sandbox   string `json:"sandbox,omitempty"`
	// A container's uprobe: the container's name, and where it is
	// attached: the container's ID and its main process.
	Container   string    `json:"container,omitempty"`
	ContainerID string    `json:"containerID,omitempty"`
	PID         int       `json:"pid,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	Since       time.Time `json:"since"`
}

// encode returns the status as the map's value: JSON within StatusSize
// bytes, NUL-padded. Every variable part is bounded.
func (s podnetStatus) encode() []byte {
	s.Reason = clip(s.Reason, maxStatusReason)
	s.Netns = clip(s.Netns, 96)
	s.Sandbox = clip(s.Sandbox, 64)
	s.ContainerID = clip(s.ContainerID, 64)
	s.Since = s.Since.Truncate(time.Millisecond)
	b, _ := json.Marshal(s)
	for len(b) > loader.StatusSize && s.Reason != "" {
		// Escapes can make a bounded reason long: cut it further
		// rather than cut the JSON.
		if len(s.Reason) < 32 {
			s.Reason = ""
		} else {
			s.Reason = clip(s.Reason, len(s.Reason)/2)
		}
		b, _ = json.Marshal(s)
	}
	out := make([]byte, loader.StatusSize)
	copy(out, b)
	return out
}

// writeStatus stores s in a volume's status map (nil: the loader gave
// none, as in unit tests).
func writeStatus(m *ebpf.Map, s podnetStatus) error {
	if m == nil {
		return nil
	}
	return m.Put(uint32(0), s.encode())
}
