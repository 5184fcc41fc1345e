// Package loader loads eBPF programs from bytecode images, attaches them to
// network hooks (xdp, tc, tcx: an interface, maybe in another network
// namespace), cgroup hooks (cgroup_skb, cgroup_sock_addr, sock_ops: a
// cgroup2 directory, AttachTo naming cgroup_sock_addr's socket operation)
// or tracing hooks (tracepoints, kprobes, uprobes, fentry/fexit: an
// AttachTo target) and pins them, sharing one attachment between identical
// requests.
//
// The loader knows nothing of CSI or Kubernetes. A caller describes what to
// load in a [Request]; [Loader.Acquire] fetches the image, resolves the
// request to an [Identity] (the image digest plus everything that makes two
// loads the same), and either joins the existing attachment with that
// identity or loads, attaches and pins a new one. Each attachment counts its
// owners (opaque strings; the driver uses volume IDs); [Loader.Release]
// detaches and unpins when the last owner goes.
//
// Pins live under Options.Root:
//
//	<root>/programs/<key>/program    the loaded program
//	<root>/programs/<key>/link       its bpf_link: attachments survive restarts
//	<root>/programs/<key>/maps/<map> the object's maps
//
// where <key> is [Identity.Key]. After a restart, [Loader.Adopt] takes an
// identity the caller recorded and re-opens its pins.
package loader
