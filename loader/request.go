package loader

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"sort"

	"github.com/bpfmount/bpfmount/loader/bytecode"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
)

// Hook names an attach point.
type Hook string

// Supported hooks.
const (
	HookXDP Hook = "xdp" // XDP on an interface's receive path
	HookTC  Hook = "tc"  // tc clsact ingress/egress through the TC dispatcher
	HookTCX Hook = "tcx" // tcx multi-program attach (kernel 6.6+)

	// Hooks on a cgroup (v2): they need Cgroup, never Interface.
	HookCgroupSKB      Hook = "cgroup_skb"       // packets in or out of the cgroup's sockets
	HookCgroupSockAddr Hook = "cgroup_sock_addr" // connect, sendmsg, recvmsg, bind of its sockets (AttachTo names which)
	HookSockOps        Hook = "sock_ops"         // TCP events of its sockets

	// Tracing hooks, spelled as bpfman's image labels spell them. Each
	// names its target in Request.AttachTo; the kernel runs any number
	// of programs on one, so they need no dispatcher and no priority.
	HookTracepoint Hook = "tracepoint" // a kernel tracepoint, group/name
	HookKprobe     Hook = "kprobe"     // a kernel function's entry (or an offset in it)
	HookKretprobe  Hook = "kretprobe"  // a kernel function's return
	HookUprobe     Hook = "uprobe"     // a user function's entry, PATH:SYMBOL
	HookUretprobe  Hook = "uretprobe"  // a user function's return
	HookFentry     Hook = "fentry"     // a kernel function's entry through a BPF trampoline
	HookFexit      Hook = "fexit"      // a kernel function's return through a BPF trampoline
)

// NetworkHooks attach to an interface; CgroupHooks to a cgroup;
// TracingHooks to an AttachTo target.
var (
	NetworkHooks = []Hook{HookXDP, HookTC, HookTCX}
	CgroupHooks  = []Hook{HookCgroupSKB, HookCgroupSockAddr, HookSockOps}
	TracingHooks = []Hook{HookTracepoint, HookKprobe, HookKretprobe, HookUprobe, HookUretprobe, HookFentry, HookFexit}
)

// Hooks lists the supported hooks.
var Hooks = slices.Concat(NetworkHooks, TracingHooks, CgroupHooks)

// IsTracing reports whether h is a tracing hook.
func IsTracing(h Hook) bool { return slices.Contains(TracingHooks, h) }

// Directions of tc and tcx hooks (the dispatcher's own).
const (
	Ingress = dispatcher.Ingress
	Egress  = dispatcher.Egress
)

// XDP attach modes (the dispatcher's own).
const (
	XDPModeAuto   = dispatcher.XDPModeAuto   // native, falling back to skb
	XDPModeNative = dispatcher.XDPModeNative // driver mode
	XDPModeSKB    = dispatcher.XDPModeSKB    // generic mode
)

// DispatcherReturn is the proceed-on action that continues the chain when a
// program returns the dispatcher's "continue" value.
const DispatcherReturn = "dispatcher_return"

// XDPActions and TCActions are the proceed-on action names per hook, with
// the bit each sets in a dispatcher's chain mask.
var (
	XDPActions = map[string]uint32{
		"aborted": 0, "drop": 1, "pass": 2, "tx": 3, "redirect": 4,
		DispatcherReturn: 31,
	}
	// TC actions are shifted by one: TC_ACT_UNSPEC is -1.
	TCActions = map[string]uint32{
		"unspec": 0, "ok": 1, "reclassify": 2, "shot": 3, "pipe": 4,
		"stolen": 5, "queued": 6, "repeat": 7, "redirect": 8, "trap": 9,
		DispatcherReturn: 30,
	}
)

// DefaultProceedOn returns the proceed-on actions a hook uses when the
// request names none (bpfman's and libxdp's defaults).
func DefaultProceedOn(h Hook) []string {
	switch h {
	case HookXDP:
		return []string{"pass", DispatcherReturn}
	case HookTC:
		return []string{"pipe", DispatcherReturn}
	}
	return nil
}

// DefaultPriority is the priority of a request that names none.
const DefaultPriority = 1000

// Request describes a program to load and attach.
type Request struct {
	// Image names the bytecode image and how to fetch it.
	Image bytecode.Request
	// Program is the function name; empty means the image's only program.
	Program string
	// Hook is the attach point; empty means the type the image's labels
	// give the program.
	Hook Hook
	// Interface is the host interface name, for xdp, tc and tcx.
	Interface string
	// Netns, when set, is the network namespace (a path to open) that
	// Interface is in; empty means the daemon's own.
	Netns string
	// Pod, when set, is the UID of the pod whose own Interface the program
	// attaches to, inside the pod's network namespace, later (see
	// AttachNetns): the program is loaded and pinned now.
	Pod string
	// Container, with Pod, names the pod's container a uprobe's AttachTo
	// path is in: resolved in that container's root filesystem, and
	// attached for the processes of its cgroup once it runs (see
	// AttachContainer).
	Container string
	// Cgroup is the cgroup2 directory a cgroup hook attaches to (absolute).
	Cgroup string
	// AttachTo is a tracing hook's target (see ParseAttachTo), or the
	// socket operation of a cgroup_sock_addr hook (connect4, sendmsg6...;
	// empty there means the one the object's section names). Other hooks
	// take none (see CheckAttachTo).
	AttachTo string
	// Direction is Ingress or Egress, for tc and tcx.
	Direction string
	// Priority orders programs on one hook: 1..1000, lower runs first.
	Priority int
	// ProceedOn lists the actions after which a dispatcher runs the next
	// program; nil means DefaultProceedOn.
	ProceedOn []string
	// XDPMode is the XDP attach mode; empty means auto.
	XDPMode string
	// Globals overrides global variables before load, by name.
	Globals map[string][]byte
}

// Identity is a resolved request: two requests with equal identities share
// one loaded program and one attachment.
type Identity struct {
	Digest    string            `json:"digest"`
	Program   string            `json:"program"`
	Hook      Hook              `json:"hook"`
	Interface string            `json:"interface"`
	Netns     string            `json:"netns,omitempty"`
	Pod       string            `json:"pod,omitempty"`       // a pod's own interface: attached later, in its sandbox's namespace
	Container string            `json:"container,omitempty"` // with Pod: the pod's container a uprobe attaches in, later
	Cgroup    string            `json:"cgroup,omitempty"`
	AttachTo  string            `json:"attachTo,omitempty"` // omitted: network identities keep their keys
	Direction string            `json:"direction,omitempty"`
	Priority  int               `json:"priority"`
	ProceedOn []string          `json:"proceedOn,omitempty"`
	XDPMode   string            `json:"xdpMode,omitempty"`
	Globals   map[string]string `json:"globals,omitempty"` // hex values
}

// Key is a short stable digest of the identity, used as its pin directory.
func (id Identity) Key() string {
	c := id
	c.ProceedOn = slices.Clone(id.ProceedOn)
	sort.Strings(c.ProceedOn)
	b, _ := json.Marshal(c) // map keys are sorted by encoding/json
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}
