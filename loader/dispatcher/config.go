package dispatcher

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// libxdp's XDP dispatcher configuration, version 2.
const (
	xdpConfigMagic   = 236 // 'X' + 'D' + 'P'
	xdpConfigVersion = 2
	// tcConfigVersion is the version of bpfman's tc dispatcher layout.
	tcConfigVersion = 1
)

// Config is a dispatcher's configuration as a reader of its .rodata sees it.
type Config struct {
	// Version is the format version: 2 for XDP (libxdp), 1 for tc.
	Version int
	// Frags reports whether an XDP dispatcher was loaded with frags support.
	Frags bool
	// Slots has one entry per enabled slot, in run order.
	Slots []SlotConfig
}

// SlotConfig is one enabled slot of a dispatcher's configuration.
type SlotConfig struct {
	ChainCallActions uint32
	RunPrio          uint32
	// ProgramFlags holds BPF_F_XDP_HAS_FRAGS when the member supports frags
	// (XDP only).
	ProgramFlags uint32
}

// configFor returns the .rodata value of a dispatcher running members.
func configFor(h Hook, members []Member) (any, bool) {
	frags := h == XDP && len(members) > 0
	for _, m := range members {
		frags = frags && m.Frags
	}
	if h == TC {
		var c TcdispatcherTcDispatcherConfig
		c.NumProgsEnabled = uint8(len(members))
		for i, m := range members {
			c.ChainCallActions[i] = m.ProceedOn
			c.RunPrios[i] = uint32(m.Priority)
		}
		return &c, false
	}
	c := XdpdispatcherXdpDispatcherConfig{
		Magic:             xdpConfigMagic,
		DispatcherVersion: xdpConfigVersion,
		NumProgsEnabled:   uint8(len(members)),
	}
	if frags {
		c.IsXdpFrags = 1
	}
	for i, m := range members {
		c.ChainCallActions[i] = m.ProceedOn
		c.RunPrios[i] = uint32(m.Priority)
		if m.Frags {
			c.ProgramFlags[i] = unix.BPF_F_XDP_HAS_FRAGS
		}
	}
	return &c, frags
}

// DecodeConfig decodes the .rodata of a dispatcher of hook h.
func DecodeConfig(h Hook, rodata []byte) (*Config, error) {
	r := bytes.NewReader(rodata)
	out := &Config{}
	if h == TC {
		var c TcdispatcherTcDispatcherConfig
		if err := binary.Read(r, binary.NativeEndian, &c); err != nil {
			return nil, fmt.Errorf("decoding a tc dispatcher configuration: %w", err)
		}
		if c.NumProgsEnabled > Slots {
			return nil, fmt.Errorf("tc dispatcher configuration enables %d slots", c.NumProgsEnabled)
		}
		out.Version = tcConfigVersion
		for i := 0; i < int(c.NumProgsEnabled); i++ {
			out.Slots = append(out.Slots, SlotConfig{ChainCallActions: c.ChainCallActions[i], RunPrio: c.RunPrios[i]})
		}
		return out, nil
	}
	var c XdpdispatcherXdpDispatcherConfig
	if err := binary.Read(r, binary.NativeEndian, &c); err != nil {
		return nil, fmt.Errorf("decoding an XDP dispatcher configuration: %w", err)
	}
	if c.Magic != xdpConfigMagic || c.DispatcherVersion != xdpConfigVersion {
		return nil, fmt.Errorf("not an XDP dispatcher configuration of version %d (magic %d, version %d)", xdpConfigVersion, c.Magic, c.DispatcherVersion)
	}
	if c.NumProgsEnabled > Slots {
		return nil, fmt.Errorf("XDP dispatcher configuration enables %d slots", c.NumProgsEnabled)
	}
	out.Version = int(c.DispatcherVersion)
	out.Frags = c.IsXdpFrags != 0
	for i := 0; i < int(c.NumProgsEnabled); i++ {
		out.Slots = append(out.Slots, SlotConfig{ChainCallActions: c.ChainCallActions[i], RunPrio: c.RunPrios[i], ProgramFlags: c.ProgramFlags[i]})
	}
	return out, nil
}

// ReadConfig reads the configuration of a loaded dispatcher from its
// .rodata map.
func ReadConfig(h Hook, dispatcher *ebpf.Program) (*Config, error) {
	info, err := dispatcher.Info()
	if err != nil {
		return nil, fmt.Errorf("reading dispatcher info: %w", err)
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return nil, fmt.Errorf("opening map %d of the dispatcher: %w", id, err)
		}
		mi, err := m.Info()
		if err != nil || mi.Type != ebpf.Array || mi.MaxEntries != 1 {
			m.Close()
			continue
		}
		val := make([]byte, mi.ValueSize)
		err = m.Lookup(uint32(0), val)
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("reading the dispatcher's configuration: %w", err)
		}
		return DecodeConfig(h, val)
	}
	return nil, errors.New("the dispatcher has no configuration map")
}

var specs struct {
	once   sync.Once
	xdp    *ebpf.CollectionSpec
	tc     *ebpf.CollectionSpec
	probes *ebpf.CollectionSpec
	err    error
}

func loadSpecs() error {
	specs.once.Do(func() {
		var errs [3]error
		specs.xdp, errs[0] = LoadXdpdispatcher()
		specs.tc, errs[1] = LoadTcdispatcher()
		specs.probes, errs[2] = LoadProbe()
		specs.err = errors.Join(errs[:]...)
	})
	return specs.err
}

// dispatcherSpec returns a copy of a hook's dispatcher object configured to
// run members, and the name of its program.
func dispatcherSpec(h Hook, members []Member) (*ebpf.CollectionSpec, string, error) {
	if err := loadSpecs(); err != nil {
		return nil, "", err
	}
	var cs *ebpf.CollectionSpec
	var prog string
	switch h {
	case XDP:
		cs, prog = specs.xdp.Copy(), XdpdispatcherProgXdpDispatcher
	case TC:
		cs, prog = specs.tc.Copy(), TcdispatcherProgTcDispatcher
	default:
		return nil, "", fmt.Errorf("dispatcher: unknown hook %q", h)
	}
	conf, frags := configFor(h, members)
	if err := cs.Variables["conf"].Set(conf); err != nil {
		return nil, "", fmt.Errorf("writing the dispatcher configuration: %w", err)
	}
	if frags {
		cs.Programs[prog].Flags |= unix.BPF_F_XDP_HAS_FRAGS
	}
	return cs, prog, nil
}

// loadDispatcher loads a dispatcher configured to run members (in order).
func loadDispatcher(h Hook, members []Member) (*ebpf.Program, error) {
	cs, name, err := dispatcherSpec(h, members)
	if err != nil {
		return nil, err
	}
	coll, err := ebpf.NewCollection(cs)
	if err != nil {
		return nil, fmt.Errorf("loading the %s dispatcher: %w", h, err)
	}
	prog := coll.Programs[name]
	delete(coll.Programs, name)
	coll.Close() // the program keeps its .rodata alive
	return prog, nil
}
