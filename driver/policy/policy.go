package policy

import "slices"

// Request is what a publish asks for, as the policy sees it.
type Request struct {
	Local          bool   // true when the request carries no pod information (standalone CLI over the root-only socket)
	Namespace      string // pod namespace (empty when Local)
	ServiceAccount string // pod service account (may be empty)
	Pod            string // pod name (for messages only)
	Image          string // the image reference exactly as written in the volume attribute
	Interface      string // network hooks; "" for cgroup and tracing hooks
	Cgroup         string // the cgroup a local request names; "" for a pod's own cgroup
	AttachTo       string // tracing hooks: their target; cgroup_sock_addr: its socket operation
	Hook           string // a hook ("xdp", "kprobe", ...); "" before the image names it (see Decide)
	Priority       int
	ReadOnly       bool
	Name           string // the request's name attribute, or the name a map-only volume reads ("" for none)
	// Reads marks a map-only volume (from: Name): it loads nothing, so
	// only who asks, the name and read-only are decided.
	Reads bool
}

// Decision is the outcome; Rule names the rule that decided ("" when none
// matched, "local" when the policy's local section decided).
type Decision struct {
	Allowed          bool
	Rule             string
	RequireSignature bool   // the deciding rule demands a verified signature; the driver enforces it after fetching
	Reason           string // full human message for denials (empty when allowed)
}

// Policy is a parsed node policy. It is immutable once parsed, so it can be
// shared between goroutines without locking.
type Policy struct {
	configured bool            // false only for Default: changes the pod denial message
	rules      []rule          // in file order
	local      *conditions     // nil: local requests are allowed unconditionally
	named      map[string]bool // namespaces some rule names exactly (metric labels)
	keep       KeepAttached    // the keepAttached section
}

// Source yields the policy in force; Decide is called on each publish with
// whatever Current returns then.
type Source interface{ Current() *Policy }

type staticSource struct{ p *Policy }

func (s staticSource) Current() *Policy { return s.p }

// Static returns a Source that always yields p.
func Static(p *Policy) Source { return staticSource{p} }

const (
	apiVersion = "bpfmount.io/v1alpha1"
	kind       = "NodePolicy"
	localRule  = "local" // Decision.Rule for decisions of the local section

	minPriority = 1
	maxPriority = 1000

	noPolicyReason = "pods may not load eBPF programs on this node: no policy is configured " +
		"(set policy.rules in the Helm values or pass --policy; see docs/policy.md)"
)

var (
	// networkHooks are allowed where a rule lists no hooks; tracing and
	// cgroup hooks (cgroup.go) only where a rule lists them.
	networkHooks  = []string{"xdp", "tc", "tcx"}
	tracingHooks  = []string{"tracepoint", "kprobe", "kretprobe", "uprobe", "uretprobe", "fentry", "fexit"}
	allHooks      = slices.Concat(networkHooks, tracingHooks, cgroupHooks)
	defaultPolicy = &Policy{}
)

// Default is the policy that applies with no policy file: pods are denied,
// local requests are allowed (including oci: layouts).
func Default() *Policy { return defaultPolicy }

var _ Source = (*Watcher)(nil)
