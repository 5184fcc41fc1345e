package programs

// TCXOrderObject returns the compiled tcx_order program.
func TCXOrderObject() []byte { return _TcxorderBytes }

// TCXOrderWideObject returns tcx_order compiled with a two-entry order_map:
// the same program with a map of another shape.
func TCXOrderWideObject() []byte { return _TcxorderwideBytes }

// CgroupHooksObject returns the compiled cgroup_hooks programs.
func CgroupHooksObject() []byte { return _CgrouphooksBytes }

// TraceCountObject returns the compiled trace_count programs.
func TraceCountObject() []byte { return _TracecountBytes }

// Slots of trace_count's counts map, one per hook (enum slot in the C
// source).
const (
	SlotTracepoint uint32 = iota
	SlotKprobe
	SlotKretprobe
	SlotUprobe
	SlotUretprobe
	SlotFentry
	SlotFexit
)
