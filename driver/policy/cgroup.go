package policy

import "fmt"

// Cgroup hooks attach to a cgroup, never to an interface: a pod's to its
// own cgroup (the driver refuses any other), a local request's to the one
// it names. A rule grants them only by naming them in hooks, so a rule
// written for interfaces never lets a pod program sockets, and a rule
// listing only cgroup hooks grants no right over the node's interfaces.
var cgroupHooks = []string{"cgroup_skb", "cgroup_sock_addr", "sock_ops"}

// allowsAny reports whether the conditions allow one of hooks.
func (c *conditions) allowsAny(hooks []string) bool {
	for _, h := range hooks {
		if contains(c.hooks, h) {
			return true
		}
	}
	return false
}

// target describes where the request attaches, for messages.
func (r *Request) target() string {
	switch {
	case r.Interface != "":
		return fmt.Sprintf("%q", r.Interface)
	case r.AttachTo != "" && r.Cgroup == "" && !contains(cgroupHooks, r.Hook):
		return fmt.Sprintf("%q", r.AttachTo) // a tracing target (or, hook unknown, maybe an operation)
	case r.Cgroup != "":
		return fmt.Sprintf("cgroup %q", r.Cgroup)
	case r.Local:
		return "a cgroup"
	}
	return "its own cgroup"
}
