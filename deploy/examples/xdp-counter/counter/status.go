package counter

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/cilium/ebpf"
)

// Status is where a volume with interface pod stands, as the driver
// writes it into the volume's bpfmount_status map: State is waiting,
// attached or failed.
type Status struct {
	State     string `json:"state"`
	Interface string `json:"interface"`
	Netns     string `json:"netns,omitempty"`
	Sandbox   string `json:"sandbox,omitempty"`
	Reason    string `json:"reason,omitempty"`
}

// ReadStatus reads the status map at path: one entry, key 0, whose value
// is JSON padded with NUL bytes.
func ReadStatus(path string) (Status, error) {
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return Status{}, fmt.Errorf("opening %s: %w", path, err)
	}
	defer m.Close()
	v := make([]byte, m.ValueSize())
	if err := m.Lookup(uint32(0), &v); err != nil {
		return Status{}, fmt.Errorf("reading %s: %w", path, err)
	}
	var s Status
	if err := json.Unmarshal(bytes.TrimRight(v, "\x00"), &s); err != nil {
		return Status{}, fmt.Errorf("reading %s: %w", path, err)
	}
	return s, nil
}
