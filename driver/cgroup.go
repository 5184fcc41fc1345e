package driver

import (
	"path/filepath"
	"strings"

	"github.com/bpfmount/bpfmount/internal/cgrouppath"
	"github.com/bpfmount/bpfmount/loader"
)

// NodeDefault is the interface value naming the node interface that holds
// the default route, resolved at publish (see podnet.go).
const NodeDefault = "node:default"

// parseTarget checks where the program attaches: a tracing type's target
// (attachTo), a host interface (interface), a cgroup a local request names
// (cgroup), or the requesting pod's own cgroup (a cgroup hook without
// either), found at publish.
func (vr *volumeRequest) parseTarget() error {
	a, lr := vr.attrs, &vr.load
	if at, ok := a[AttrAttachTo]; ok {
		if at == "" {
			return invalid("volume attribute %q is empty: name a tracing type's target or a cgroup_sock_addr socket operation, or remove it", AttrAttachTo)
		}
		lr.AttachTo = at
	}
	ifname, hasIf := a[AttrInterface]
	cg, hasCg := a[AttrCgroup]
	// Without a type the image's labels name it: an attachTo that is no
	// socket operation can only be a tracing type's target.
	if loader.IsTracing(lr.Hook) || lr.Hook == "" && lr.AttachTo != "" && !loader.IsSockAddrOp(lr.AttachTo) {
		if hasCg {
			return invalid("volume attribute %q applies to the cgroup types (%s), not to tracing types, which attach to their %q target: remove it",
				AttrCgroup, hookNames(loader.CgroupHooks), AttrAttachTo)
		}
		if hasIf && lr.Hook == "" {
			return invalid("volume attributes %q and %q exclude each other: %q %.80q names a tracing type's target, and tracing types attach to no interface; remove one",
				AttrInterface, AttrAttachTo, AttrAttachTo, lr.AttachTo)
		}
		return nil // checkHookKeys checks the target and refuses the network keys
	}
	cgroupHook := loader.IsCgroupHook(lr.Hook)
	if lr.AttachTo != "" {
		switch {
		case lr.Hook == loader.HookCgroupSockAddr && !loader.IsSockAddrOp(lr.AttachTo):
			return invalid("volume attribute %q: %.80q is not a socket operation (valid: %s)", AttrAttachTo, lr.AttachTo, strings.Join(loader.SockAddrOpNames(), ", "))
		case lr.Hook == "" && hasIf:
			return invalid("volume attributes %q and %q exclude each other: %q %s names a socket operation of type cgroup_sock_addr, which attaches to a cgroup, not an interface; remove one",
				AttrInterface, AttrAttachTo, AttrAttachTo, lr.AttachTo)
		}
		// Other types refuse attachTo in checkHookKeys, once the target
		// is known to be there.
	}
	if _, ok := a[AttrPriority]; ok && cgroupHook {
		// The kernel runs a cgroup's programs in attach order; a priority
		// would promise an order bpfmount cannot give.
		return invalid("volume attribute %q does not apply to type %s: the kernel runs every program on a cgroup, in the order they were attached; remove it", AttrPriority, lr.Hook)
	}
	if hasCg && vr.fromPod {
		// A pod attaches to its own cgroup only; naming one would let it
		// program other pods' or the node's sockets.
		return invalid("volume attribute %q is for local requests only: a pod's cgroup programs attach to the pod's own cgroup; remove it", AttrCgroup)
	}
	switch {
	case hasIf && cgroupHook:
		return invalid("volume attribute %q does not apply to type %s, which attaches to a cgroup (a pod's own, or the one a local request names in %q): remove it", AttrInterface, lr.Hook, AttrCgroup)
	case hasIf && hasCg:
		return invalid("volume attributes %q and %q exclude each other: a program attaches to an interface or to a cgroup", AttrInterface, AttrCgroup)
	case hasIf:
		if ifname == "" {
			return invalid("volume attribute %q is empty: name the host interface to attach to, e.g. eth0, or %s", AttrInterface, NodeDefault)
		}
		if ifname != NodeDefault {
			if err := checkIfname(ifname); err != nil {
				return err
			}
		}
		lr.Interface = ifname // node:default is resolved at publish
	case hasCg:
		if lr.Hook != "" && !cgroupHook {
			return invalid("volume attribute %q applies to the cgroup types (%s), not %s: remove it", AttrCgroup, hookNames(loader.CgroupHooks), lr.Hook)
		}
		if !filepath.IsAbs(cg) || filepath.Clean(cg) != cg {
			return invalid("volume attribute %q: %q is not an absolute, clean path of a cgroup2 directory, e.g. %s/my.slice", AttrCgroup, cg, cgrouppath.DefaultRoot)
		}
		lr.Cgroup = cg
	case vr.fromPod && (cgroupHook || lr.Hook == ""):
		// The UID becomes part of a path: only a UUID is accepted.
		if !cgrouppath.ValidUID(vr.pod.UID) {
			return invalid("the pod UID %.64q (%s) is not a UUID, so the pod's cgroup cannot be found: a cgroup program needs the pod's UID from kubelet (set podInfoOnMount on the CSIDriver)", vr.pod.UID, keyPodUID)
		}
		vr.podCgroup = true
	case cgroupHook:
		return invalid("volume attribute %q is required for type %s in a local request: the cgroup2 directory to attach to, e.g. %s/my.slice", AttrCgroup, lr.Hook, cgrouppath.DefaultRoot)
	default:
		return invalid("volume attribute %q is required: the host interface to attach to, e.g. eth0, or %s (the interface of the default route); cgroup types (%s) need none, and tracing types take %q instead",
			AttrInterface, NodeDefault, hookNames(loader.CgroupHooks), AttrAttachTo)
	}
	return nil
}

// checkCgroupHookKeys rejects keys that do not apply to a cgroup hook.
func checkCgroupHookKeys(lr *loader.Request) error {
	if lr.XDPMode != "" {
		return invalid("volume attribute %q applies to xdp, not %s: remove it", AttrXDPMode, lr.Hook)
	}
	if len(lr.ProceedOn) > 0 {
		return invalid("volume attribute %q applies to xdp and tc, not %s (the kernel runs every program on a cgroup): remove it", AttrProceedOn, lr.Hook)
	}
	switch lr.Hook {
	case loader.HookCgroupSKB:
		if lr.Direction == "" {
			return invalid("volume attribute %q is required for type %s (valid: ingress, egress)", AttrDirection, lr.Hook)
		}
	case loader.HookCgroupSockAddr, loader.HookSockOps:
		if lr.Direction != "" {
			return invalid("volume attribute %q applies to tc, tcx and cgroup_skb, not %s: remove it", AttrDirection, lr.Hook)
		}
	}
	return nil
}

// resolveCgroup finds the cgroup a request attaches to, once the policy
// allowed it: the pod's own, searched under the cgroup2 root, or the one
// a local request names, checked to be a cgroup2 directory reached with no
// symbolic link.
func (d *Driver) resolveCgroup(vr *volumeRequest) error {
	switch {
	case vr.podCgroup:
		path, err := cgrouppath.Finder{Root: d.opts.CgroupRoot, KubeletRoot: d.opts.KubeletCgroupRoot}.Find(vr.pod.UID)
		if err != nil {
			return err
		}
		vr.load.Cgroup = path
	case vr.load.Cgroup != "":
		return cgrouppath.CheckDir(d.opts.CgroupRoot, vr.load.Cgroup)
	}
	return nil
}

// targetOf describes an identity's attach point for events and logs.
func targetOf(id loader.Identity) string {
	if loader.IsTracing(id.Hook) {
		return id.AttachTo
	}
	if loader.IsCgroupHook(id.Hook) || (id.Interface == "" && id.Cgroup != "") {
		return "cgroup " + id.Cgroup
	}
	return id.Interface
}
