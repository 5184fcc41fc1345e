// Package dispatcher chains up to ten eBPF programs on one XDP hook, or on
// one tc (clsact) hook, with a dispatcher program in libxdp's design: the
// dispatcher calls ten global stubs prog0..prog9 in turn, and each member
// program replaces one stub with freplace (BPF_PROG_TYPE_EXT). After each
// member the dispatcher goes on to the next one when the member's verdict is
// in that slot's chain-call mask, and otherwise returns the verdict; when
// every member proceeds it returns XDP_PASS (tc: TC_ACT_OK).
//
// The package knows nothing of CSI or of the loader's requests. Its pieces:
//
//   - [Supported] tells whether the kernel can run a dispatcher at all.
//   - [LoadMember] loads a program from a collection as an extension that
//     can fill any slot of any dispatcher of its hook.
//   - A [Chain] is the dispatcher of one attach point (an interface's XDP
//     hook, or an interface's tc ingress or egress hook). [Chain.Update]
//     adds and removes members, coalescing concurrent callers: each change
//     builds a new dispatcher revision with every member attached to its slot, then
//     swaps it in atomically (XDP: BPF_LINK_UPDATE on the pinned link; tc:
//     an in-place replace of the cls_bpf filter), then, after an RCU grace
//     period, drops the old revision. Traffic never meets an empty or a
//     partial chain.
//   - [Open] re-adopts a chain from its pins after a restart.
//   - [WithLibxdpPins] shares an XDP chain with libxdp: its dispatcher is
//     attached and swapped through netlink under libxdp's lock, each
//     change starts from the dispatcher attached (libxdp's programs become
//     members), and each revision is pinned in libxdp's layout too.
//
// Members run in the order of [Compare]: priority ascending, then program
// name, then creation time, then key.
//
// # Pins
//
// A chain keeps everything under the directory its caller gives (on a
// bpffs), for example <root>/dispatchers/<[PinDirName]>:
//
//	<dir>/link                               XDP only: the interface's bpf_link (not shared with libxdp)
//	<dir>/netlink/                           XDP shared with libxdp: an empty marker, attached through netlink
//	<dir>/rev-<N>/dispatcher                 the dispatcher program of revision N
//	<dir>/rev-<N>/slot-<I>_<key>_<ns>_<name> the freplace link of the member in slot I
//
// <ns> is the member's creation time in Unix nanoseconds and <name> its
// program name, so that [Open] restores the members' order keys from the
// pins alone; priority, chain-call mask and frags support are read back from
// the dispatcher's configuration. A tc chain's filter lives in the kernel's
// tc tables (clsact, cls_bpf, direct-action, at [DefaultTCPriority] and
// [DefaultTCHandle] unless the target says otherwise).
//
// # Configuration format
//
// The XDP dispatcher's .rodata holds libxdp's dispatcher configuration,
// version 2 (magic 236, version, num_progs_enabled, is_xdp_frags,
// chain_call_actions[10], run_prios[10], program_flags[10]); an empty stub
// returns 31, the top bit of a mask. The tc dispatcher's .rodata holds
// bpfman's tc dispatcher configuration, version 1 (num_progs_enabled,
// chain_call_actions[10], run_prios[10]); a tc verdict v proceeds when bit
// v+1 is set (TC_ACT_UNSPEC is -1), and an empty stub returns 30.
package dispatcher

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/loader/internal/xdplink"
)

// Hook is the kind of attach point a dispatcher serves.
type Hook string

// Hooks with a dispatcher.
const (
	XDP Hook = "xdp" // an interface's XDP hook
	TC  Hook = "tc"  // an interface's tc clsact hook, ingress or egress
)

// Directions of a tc hook.
const (
	Ingress = "ingress"
	Egress  = "egress"
)

// XDP attach modes of a chain's dispatcher.
const (
	XDPModeAuto   = xdplink.Auto   // native, falling back to skb
	XDPModeNative = xdplink.Native // driver mode
	XDPModeSKB    = xdplink.SKB    // generic mode
)

// Slots is the number of members a dispatcher can hold.
const Slots = 10

// Verdicts the stub of an empty slot returns, and so the chain-call bit a
// member sets to mean "go on" (bpfman's and libxdp's dispatcher_return).
// Both are bit 31 of a mask: a tc verdict v maps to bit v+1.
const (
	XDPDispatcherReturn = 31
	TCDispatcherReturn  = 30
)

// Defaults of a tc chain's cls_bpf filter.
const (
	DefaultTCPriority = 50
	DefaultTCHandle   = 1
)

// ErrUnsupported is wrapped by the errors of a kernel that cannot run a
// dispatcher (it rejects freplace).
var ErrUnsupported = errors.New("this kernel cannot chain programs with a dispatcher")

// Target is the attach point of a chain.
type Target struct {
	Hook Hook
	// Ifindex is the interface's index; Interface its name, for messages.
	Ifindex   int
	Interface string
	// Direction is Ingress or Egress, for TC.
	Direction string
	// XDPMode is the XDP attach mode used when the chain's dispatcher is
	// first attached: XDPModeNative, XDPModeSKB, or XDPModeAuto (also "").
	XDPMode string
	// TCPriority and TCHandle place a tc chain's cls_bpf filter on the
	// clsact qdisc; zero means DefaultTCPriority and DefaultTCHandle.
	TCPriority uint16
	TCHandle   uint32
	// Netns, when set, is the path of the network namespace the interface
	// is in (a pod's), and NetnsIno that namespace's inode; "" is the
	// caller's namespace. Two chains on interfaces of one name and index
	// in different namespaces are different chains: the caller keys their
	// pin directories apart (PinDirName is for the caller's namespace).
	Netns    string
	NetnsIno uint64
}

func (t Target) validate() error {
	if t.Ifindex <= 0 {
		return fmt.Errorf("dispatcher: target %q has no interface index", t.Interface)
	}
	switch t.Hook {
	case XDP:
		switch t.XDPMode {
		case "", XDPModeAuto, XDPModeNative, XDPModeSKB:
		default:
			return fmt.Errorf("dispatcher: unknown XDP mode %q", t.XDPMode)
		}
		if t.Direction != "" {
			return fmt.Errorf("dispatcher: an XDP target has no direction")
		}
	case TC:
		if t.Direction != Ingress && t.Direction != Egress {
			return fmt.Errorf("dispatcher: a tc target needs direction %q or %q, not %q", Ingress, Egress, t.Direction)
		}
	default:
		return fmt.Errorf("dispatcher: unknown hook %q", t.Hook)
	}
	return nil
}

// describe names the attach point in messages: `XDP on "eth0"`.
func (t Target) describe() string {
	if t.Hook == TC {
		return fmt.Sprintf("tc %s on %q", t.Direction, t.Interface)
	}
	return fmt.Sprintf("XDP on %q", t.Interface)
}

func (t Target) tcPriority() uint16 {
	if t.TCPriority == 0 {
		return DefaultTCPriority
	}
	return t.TCPriority
}

func (t Target) tcHandle() uint32 {
	if t.TCHandle == 0 {
		return DefaultTCHandle
	}
	return t.TCHandle
}

// PinDirName is a directory name for a target's chain, unique per
// interface index, hook and direction: "4-xdp", "4-tc-ingress".
func PinDirName(t Target) string {
	if t.Hook == TC {
		return fmt.Sprintf("%d-tc-%s", t.Ifindex, t.Direction)
	}
	return fmt.Sprintf("%d-%s", t.Ifindex, t.Hook)
}

// Member is one program of a chain.
type Member struct {
	// Key identifies the member in its chain (the loader uses its identity
	// key): 1 to 64 letters, digits or '-'.
	Key string
	// Name is the program's name; it orders members of equal priority.
	Name string
	// Program is the member loaded as an extension (see LoadMember). The
	// chain keeps its own duplicate of the descriptor: the caller may close
	// its copy whenever it likes.
	Program *ebpf.Program
	// Priority orders the members, lowest first.
	Priority int
	// ProceedOn is the chain-call mask: the member's verdict v lets the
	// next member run when bit v (XDP) or bit v+1 (tc) is set.
	ProceedOn uint32
	// Frags says the program handles multi-buffer XDP frames (it was
	// loaded with BPF_F_XDP_HAS_FRAGS; LoadMember reports it). The XDP
	// dispatcher declares frags support only when every member does.
	Frags bool
	// Created orders members of equal priority and name, oldest first.
	Created time.Time
}

// Compare orders members as a chain runs them: priority ascending, then
// program name, then creation time, then key. It suits slices.SortFunc.
func Compare(a, b Member) int {
	switch {
	case a.Priority != b.Priority:
		return cmpInt(a.Priority, b.Priority)
	case a.Name != b.Name:
		return strings.Compare(a.Name, b.Name)
	case !a.Created.Equal(b.Created):
		return a.Created.Compare(b.Created)
	}
	return strings.Compare(a.Key, b.Key)
}

func cmpInt(a, b int) int {
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}

// The lengths are checked apart: a bounded repetition such as {0,128}
// compiles into that many copies, which every process paid at start
// (about 160 KB and 2,000 allocations, the CLI included).
var (
	keyPattern  = regexp.MustCompile(`^[A-Za-z0-9-]+$`)
	namePattern = regexp.MustCompile(`^[A-Za-z0-9_]*$`)
)

// checkMember checks a member's key (1-64 letters, digits or '-') and
// program name (up to 128 letters, digits or '_').
func checkMember(key, name string) error {
	if len(key) > 64 || !keyPattern.MatchString(key) {
		return fmt.Errorf("dispatcher: member key %q is not 1-64 letters, digits or '-'", key)
	}
	if len(name) > 128 || !namePattern.MatchString(name) {
		return fmt.Errorf("dispatcher: member name %q is not a program name", name)
	}
	return nil
}

// ExhaustedError is what a chain returns, wrapped in a fault.Exhausted
// error, when a member set does not fit in its slots.
type ExhaustedError struct {
	Target Target
	// Holders are the keys of the members that hold the slots, in slot
	// order, and Refused the keys of the members that did not fit.
	Holders []string
	Refused []string
}

func (e *ExhaustedError) Error() string {
	hook := "XDP"
	if e.Target.Hook == TC {
		hook = "tc " + e.Target.Direction
	}
	return fmt.Sprintf("the %s dispatcher on interface %q has %d slots and all are taken", hook, e.Target.Interface, Slots)
}
