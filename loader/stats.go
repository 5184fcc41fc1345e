package loader

import (
	"sort"
	"time"

	"github.com/cilium/ebpf"
)

// Usage is what the kernel says one attachment costs: how often its program
// ran and for how long, and the memory of its maps. It is read from the
// program's and maps' info on every call, nothing is cached.
type Usage struct {
	Key      string
	Identity Identity
	// ID is the kernel's program ID.
	ID ebpf.ProgramID
	// Owners are the owners sharing the attachment (the driver's volume
	// IDs), sorted.
	Owners []string
	// Dispatched is true when the program runs as a dispatcher's member
	// (freplace): the kernel then accounts its runs to the dispatcher,
	// so the member's own run count says nothing.
	Dispatched bool
	// Attached is false when the program lost its interface.
	Attached bool
	// Run is nil when the kernel did not answer (Dispatched, or reading the
	// program's info failed). Its values are zero unless run-time
	// statistics are enabled (ebpf.EnableStats(BPF_STATS_RUN_TIME)).
	Run *RunStats
	// Maps are the object's maps (internal .rodata/.data/.bss left out),
	// sorted by name; a map whose info could not be read is left out.
	Maps []MapUsage
}

// RunStats are a program's run-time statistics.
type RunStats struct {
	// Count is how many times the program ran.
	Count uint64
	// Time is the time it spent running, in total.
	Time time.Duration
}

// MapUsage is the memory one map takes.
type MapUsage struct {
	Name string
	ID   ebpf.MapID
	// Bytes is what the kernel charges the map (the "memlock" it reports),
	// or, on kernels that report none, an estimate made from its key and
	// value sizes and maximum entries; Estimated says which.
	Bytes     uint64
	Estimated bool
}

// Usage reads every attachment's usage from the kernel, sorted by key. The
// loader's lock is held only to duplicate the descriptors: the kernel is
// asked outside it, so a scrape never holds up a publish.
func (l *Loader) Usage() []Usage {
	type held struct {
		u    Usage
		prog *ebpf.Program
		maps map[string]*ebpf.Map
	}
	var all []held
	l.mu.Lock()
	for _, e := range l.entries {
		h := held{u: Usage{Key: e.key, Identity: e.id, ID: e.progID, Dispatched: e.chain != nil, Attached: e.attached}, maps: map[string]*ebpf.Map{}}
		for o := range e.owners {
			h.u.Owners = append(h.u.Owners, o)
		}
		sort.Strings(h.u.Owners)
		// A release may close the entry's descriptors as soon as the lock
		// is dropped: work on duplicates.
		if e.prog != nil && e.chain == nil {
			if p, err := e.prog.Clone(); err == nil {
				h.prog = p
			}
		}
		for name, m := range e.maps {
			if c, err := m.Clone(); err == nil {
				h.maps[name] = c
			}
		}
		all = append(all, h)
	}
	l.mu.Unlock()

	out := make([]Usage, 0, len(all))
	for _, h := range all {
		if h.prog != nil {
			if st, err := h.prog.Stats(); err == nil {
				h.u.Run = &RunStats{Count: st.RunCount, Time: st.Runtime}
			}
			h.prog.Close()
		}
		for name, m := range h.maps {
			if mu, ok := mapUsage(name, m); ok {
				h.u.Maps = append(h.u.Maps, mu)
			}
			m.Close()
		}
		sort.Slice(h.u.Maps, func(i, j int) bool { return h.u.Maps[i].Name < h.u.Maps[j].Name })
		out = append(out, h.u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

func mapUsage(name string, m *ebpf.Map) (MapUsage, bool) {
	info, err := m.Info()
	if err != nil {
		return MapUsage{}, false
	}
	u := MapUsage{Name: name}
	u.ID, _ = info.ID()
	if b, ok := info.Memlock(); ok {
		u.Bytes = b
		return u, true
	}
	u.Bytes, u.Estimated = EstimateMapBytes(info.Type, info.KeySize, info.ValueSize, info.MaxEntries), true
	return u, true
}

// EstimateMapBytes is a map's memory as its shape suggests, for kernels that
// do not report what they charge: every entry's key and value (one value
// per possible CPU for per-CPU maps). It ignores the kernel's per-entry
// overhead, so it is a lower bound; a ring buffer's max entries is its size.
func EstimateMapBytes(typ ebpf.MapType, keySize, valueSize, maxEntries uint32) uint64 {
	switch typ {
	case ebpf.RingBuf, ebpf.UserRingbuf:
		return uint64(maxEntries)
	case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash, ebpf.PerCPUCGroupStorage:
		cpus, err := ebpf.PossibleCPU()
		if err != nil || cpus < 1 {
			cpus = 1
		}
		// Per-CPU values are 8-byte aligned.
		v := (uint64(valueSize) + 7) &^ 7
		return uint64(maxEntries) * (uint64(keySize) + v*uint64(cpus))
	}
	return uint64(maxEntries) * (uint64(keySize) + uint64(valueSize))
}
