// Package adminapi is the wire format of bpfmount's admin service: its
// method name, content type and messages, plain Go structs carried as
// JSON. It imports no gRPC code, so the command-line client, which speaks
// the protocol itself, links it alone; package admin serves it with
// grpc-go.
package adminapi

// ServiceName is the gRPC service name.
const ServiceName = "bpfmount.v1.Admin"

// ListVolumesMethod is the full method name of ListVolumes.
const ListVolumesMethod = "/" + ServiceName + "/ListVolumes"

// ContentSubtype names the JSON codec the messages travel in: a call's
// content type is "application/grpc+" + ContentSubtype, so CSI calls on the
// same connection keep protobuf.
const ContentSubtype = "bpfmount-json"

// ListVolumesRequest asks for the volumes the daemon knows: every one, or
// those at the given targets.
type ListVolumesRequest struct {
	// Targets, when not empty, keeps only the volumes published at one of
	// these paths (compared clean): how `unpublish --target` finds its
	// volume without the daemon describing every other one.
	Targets []string `json:"targets,omitempty"`
	// Usage asks for what the loader holds for each volume's program
	// (attached, shared by, run statistics, map memory), which costs the
	// daemon a kernel query per program. Nil, as from a client predating
	// the field, means yes.
	Usage *bool `json:"usage,omitempty"`
}

// WithUsage returns whether req asks for usage.
func (req *ListVolumesRequest) WithUsage() bool { return req.Usage == nil || *req.Usage }

// ListVolumesResponse lists the daemon's volumes, sorted by volume ID.
type ListVolumesResponse struct {
	Volumes []Volume `json:"volumes"`
}

// Volume is one published volume as the daemon's record describes it.
// Attributes are not included: they may carry a service account token.
type Volume struct {
	VolumeID     string   `json:"volumeID"`
	Target       string   `json:"target"`
	PodNamespace string   `json:"podNamespace,omitempty"`
	PodName      string   `json:"podName,omitempty"`
	PodUID       string   `json:"podUID,omitempty"`
	Image        string   `json:"image"`
	Digest       string   `json:"digest"`
	Signed       bool     `json:"signed"`
	Program      string   `json:"program"`
	Hook         string   `json:"hook"`
	Direction    string   `json:"direction,omitempty"`
	Interface    string   `json:"interface"`
	Cgroup       string   `json:"cgroup,omitempty"` // cgroup hooks: the cgroup attached to
	AttachTo     string   `json:"attachTo,omitempty"`
	Priority     int      `json:"priority"`
	XDPMode      string   `json:"xdpMode,omitempty"`
	ProgramID    uint32   `json:"programID"`
	Maps         []string `json:"maps"`
	ReadOnly     bool     `json:"readOnly"`
	// Created is RFC 3339 (a string, so the message stays plain JSON).
	Created string `json:"created,omitempty"`
	// Broken says why the volume's program could not be re-adopted when
	// the daemon started; its program is not loaded.
	Broken string `json:"broken,omitempty"`
	// Lifetimes (see docs/lifetimes.md): the load's name, the name a
	// map-only volume reads, keepAttached, and the maps an upgrade in
	// place by this volume's publish started empty.
	Name         string   `json:"name,omitempty"`
	From         string   `json:"from,omitempty"`
	KeepAttached string   `json:"keepAttached,omitempty"`
	ResetMaps    []string `json:"resetMaps,omitempty"`

	// What the daemon's loader holds for the volume's program now; absent
	// when the program is not loaded (a broken volume, or a daemon that
	// predates these fields).

	// Attached is false when the program's interface went away.
	Attached *bool `json:"attached,omitempty"`
	// SharedBy is how many volumes share the program (1: this one only).
	SharedBy int `json:"sharedBy,omitempty"`
	// Dispatched is true when the program runs as a member of the
	// interface's dispatcher: the kernel counts its runs in the
	// dispatcher, so it has no run statistics of its own.
	Dispatched bool `json:"dispatched,omitempty"`
	// RunCount and RunTimeNs are the kernel's run-time statistics of the
	// program (all volumes sharing it, since it was loaded, counted while
	// statistics were enabled); absent when the daemon does not collect
	// them (--program-stats=false, a kernel that refuses them, a
	// dispatched program).
	RunCount  *uint64 `json:"runCount,omitempty"`
	RunTimeNs *uint64 `json:"runTimeNs,omitempty"`
	// MapBytes is the memory of the program's maps; MapBytesEstimated is
	// true when the kernel reported none for some map and its size was
	// computed from key and value sizes and max entries.
	MapBytes          *uint64 `json:"mapBytes,omitempty"`
	MapBytesEstimated bool    `json:"mapBytesEstimated,omitempty"`
}
