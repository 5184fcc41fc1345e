package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// Cgroup hooks attach to a cgroup2 directory rather than an interface.
// Their links are bpf_links, which the kernel runs alongside every other
// program on the same cgroup and attach type (multi-program, as with
// BPF_F_ALLOW_MULTI): bpfmount never replaces what others attached.

// cgroupProgTypes is the program type each cgroup hook needs.
var cgroupProgTypes = map[Hook]ebpf.ProgramType{
	HookCgroupSKB:      ebpf.CGroupSKB,
	HookCgroupSockAddr: ebpf.CGroupSockAddr,
	HookSockOps:        ebpf.SockOps,
}

// SockAddrOps are the attachTo values of a cgroup_sock_addr hook and the
// kernel attach type of each.
var SockAddrOps = map[string]ebpf.AttachType{
	"connect4": ebpf.AttachCGroupInet4Connect,
	"connect6": ebpf.AttachCGroupInet6Connect,
	"sendmsg4": ebpf.AttachCGroupUDP4Sendmsg,
	"sendmsg6": ebpf.AttachCGroupUDP6Sendmsg,
	"recvmsg4": ebpf.AttachCGroupUDP4Recvmsg,
	"recvmsg6": ebpf.AttachCGroupUDP6Recvmsg,
	"bind4":    ebpf.AttachCGroupInet4Bind,
	"bind6":    ebpf.AttachCGroupInet6Bind,
}

// SockAddrOpNames lists the attachTo values, sorted.
func SockAddrOpNames() []string {
	out := make([]string, 0, len(SockAddrOps))
	for k := range SockAddrOps {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// IsSockAddrOp reports whether s is a socket operation of cgroup_sock_addr.
func IsSockAddrOp(s string) bool {
	_, ok := SockAddrOps[s]
	return ok
}

// IsCgroupHook reports whether h attaches to a cgroup.
func IsCgroupHook(h Hook) bool {
	_, ok := cgroupProgTypes[h]
	return ok
}

// lockName is the name of the lock that serializes attaches to id's
// target: a cgroup, a tracing target, or an interface (in a namespace).
// Interface names cannot hold ':', and each other kind has its own
// prefix, so no two kinds collide.
func lockName(id Identity) string {
	if IsCgroupHook(id.Hook) {
		return "cgroup:" + id.Cgroup
	}
	if IsTracing(id.Hook) {
		return string(id.Hook) + ":" + id.AttachTo
	}
	if id.Netns != "" {
		return netnsLockName(id)
	}
	return id.Interface
}

// targetName describes id's attach point in messages.
func targetName(id Identity) string {
	if IsTracing(id.Hook) {
		return id.AttachTo
	}
	if IsCgroupHook(id.Hook) {
		return "cgroup " + id.Cgroup
	}
	if id.Netns != "" {
		return id.Interface + " in network namespace " + id.Netns
	}
	return id.Interface
}

// resolveCgroup checks the keys of a cgroup hook and fills in attachTo
// from the object's section when the request names none.
func resolveCgroup(id *Identity, ps *ebpf.ProgramSpec) error {
	if id.Interface != "" {
		return fault.Errorf(fault.Invalid, "hook %s attaches to a cgroup, not an interface: remove interface", id.Hook)
	}
	if id.Cgroup == "" || !filepath.IsAbs(id.Cgroup) || filepath.Clean(id.Cgroup) != id.Cgroup {
		return fault.Errorf(fault.Invalid, "hook %s needs the cgroup to attach to as an absolute, clean path (got %q)", id.Hook, id.Cgroup)
	}
	if id.XDPMode != "" {
		return fault.Errorf(fault.Invalid, "xdpMode applies to xdp, not %s", id.Hook)
	}
	switch id.Hook {
	case HookCgroupSKB:
		if id.Direction != Ingress && id.Direction != Egress {
			return fault.Errorf(fault.Invalid, "hook %s needs direction ingress or egress", id.Hook)
		}
		if err := CheckAttachTo(id.Hook, id.AttachTo); err != nil {
			return err
		}
	case HookCgroupSockAddr:
		if id.Direction != "" {
			return fault.Errorf(fault.Invalid, "direction applies to tc, tcx and cgroup_skb, not %s", id.Hook)
		}
		if id.AttachTo == "" {
			for name, at := range SockAddrOps {
				if ps.AttachType == at {
					id.AttachTo = name
				}
			}
		}
		if id.AttachTo == "" {
			return fault.Errorf(fault.Invalid, "hook %s needs attachTo, the socket operation to hook (valid: %v), or a program in a section that names one", id.Hook, SockAddrOpNames())
		}
		if err := CheckAttachTo(id.Hook, id.AttachTo); err != nil {
			return err
		}
	case HookSockOps:
		if id.Direction != "" {
			return fault.Errorf(fault.Invalid, "direction applies to tc, tcx and cgroup_skb, not %s", id.Hook)
		}
		if err := CheckAttachTo(id.Hook, id.AttachTo); err != nil {
			return err
		}
	}
	return nil
}

// checkNotCgroup refuses cgroup keys on a network hook.
func checkNotCgroup(id Identity) error {
	if id.Cgroup != "" {
		return fault.Errorf(fault.Invalid, "hook %s attaches to an interface, not a cgroup: use type cgroup_skb, cgroup_sock_addr or sock_ops", id.Hook)
	}
	return CheckAttachTo(id.Hook, id.AttachTo)
}

// CheckAttachTo checks attachTo for hook h: a tracing type's target (see
// ParseAttachTo, which also refuses an empty one), a socket operation for
// cgroup_sock_addr (empty: the object's section names it), and nothing for
// any other hook.
func CheckAttachTo(h Hook, s string) error {
	switch {
	case IsTracing(h):
		_, err := ParseAttachTo(h, s)
		return err
	case h == HookCgroupSockAddr:
		if s != "" && !IsSockAddrOp(s) {
			return fault.Errorf(fault.Invalid, "attachTo %.80q is not a socket operation of hook %s (valid: %v)", s, h, SockAddrOpNames())
		}
		return nil
	case s != "":
		return fault.Errorf(fault.Invalid, "attachTo applies to tracing types (%s) and cgroup_sock_addr, not %s: remove it", hookList(TracingHooks), h)
	}
	return nil
}

// cgroupAttachType is the kernel attach type of a cgroup identity.
func cgroupAttachType(id Identity) ebpf.AttachType {
	switch id.Hook {
	case HookCgroupSKB:
		if id.Direction == Egress {
			return ebpf.AttachCGroupInetEgress
		}
		return ebpf.AttachCGroupInetIngress
	case HookCgroupSockAddr:
		return SockAddrOps[id.AttachTo]
	case HookSockOps:
		return ebpf.AttachCGroupSockOps
	}
	return ebpf.AttachNone
}

// setCgroupAttachType makes the program's expected attach type the one it
// is attached with, whatever section the object put it in: the verifier
// checks a cgroup_sock_addr program against that operation.
func setCgroupAttachType(cs *ebpf.CollectionSpec, id Identity) {
	if ps := cs.Programs[id.Program]; ps != nil && IsCgroupHook(id.Hook) {
		ps.AttachType = cgroupAttachType(id)
	}
}

// checkCgroupDir checks, before anything is loaded, that the cgroup is a
// directory of a cgroup2 hierarchy.
func checkCgroupDir(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fault.Errorf(fault.Precondition, "cgroup %s does not exist (the pod may have ended)", dir)
		}
		return fmt.Errorf("inspecting cgroup %s: %w", dir, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fault.Errorf(fault.Precondition, "%s is not in a cgroup2 hierarchy: cgroup programs attach to cgroup v2 only", dir)
	}
	return nil
}

// attachCgroup attaches a cgroup program with a bpf_link. Caller holds the
// cgroup's lock.
func (l *Loader) attachCgroup(e *entry) error {
	if err := checkCgroupDir(e.id.Cgroup); err != nil {
		return err
	}
	lnk, err := link.AttachCgroup(link.CgroupOptions{Path: e.id.Cgroup, Attach: cgroupAttachType(e.id), Program: e.prog})
	if err != nil {
		if _, serr := os.Stat(e.id.Cgroup); serr != nil {
			return fault.Errorf(fault.Precondition, "cgroup %s is gone (the pod may have ended): %v", e.id.Cgroup, err)
		}
		return fmt.Errorf("attaching %s program %q to cgroup %s: %w", e.id.Hook, e.id.Program, e.id.Cgroup, err)
	}
	e.link = lnk
	return nil
}
