// Package policy decides which publish requests may load eBPF programs on
// this node.
//
// Pod Security Admission allows csi volumes in every profile, so without a
// policy of its own the driver would let anyone who can create a pod attach
// code to the node's interfaces. Requests from pods are therefore denied
// unless a rule allows them. Requests with no pod information come from the
// root-only socket (the standalone CLI); they are allowed unless the
// policy's local section narrows them.
//
// # File format
//
// A policy is one YAML document:
//
//	apiVersion: bpfmount.io/v1alpha1
//	kind: NodePolicy
//	rules:
//	- name: monitoring                      # required, unique ("local" is reserved)
//	  namespaces: ["monitoring", "net-*"]   # required; exact names or globs
//	  serviceAccounts: ["collector"]        # optional; absent = any service account
//	  images: ["registry.example/bpf/*"]    # required; repository globs (see below)
//	  requireDigest: true                   # optional; image must be pinned by @sha256:
//	  requireSignature: true                # optional; driver verifies after fetching
//	  interfaces: ["eth*"]                  # optional; absent = any interface
//	  hooks: ["xdp", "tcx", "tracepoint"]   # optional; absent = xdp, tc and tcx (tracing and cgroup types only when listed)
//	  attachTo: ["syscalls/*", "connect4"]  # optional; tracing targets and cgroup_sock_addr operations; absent = any
//	  priorities: {min: 10, max: 500}       # optional; absent = 1..1000 (either bound may be omitted)
//	  readOnlyOnly: true                    # optional; only readOnly volumes
//	- name: bytecode-on-disk
//	  namespaces: ["lab"]
//	  images: ["oci:/srv/bytecode/**"]      # local OCI layouts need an explicit oci: pattern
//	local:                                  # optional; requests with no pod information
//	  images: ["registry.example/bpf/**", "oci:/srv/bytecode/*"]
//	  requireDigest: false
//	  requireSignature: false
//	  interfaces: ["*"]
//	  hooks: ["xdp", "tc", "tcx"]
//	  priorities: {min: 1, max: 1000}
//	  readOnlyOnly: false
//
// Unknown fields are errors (field names are case-sensitive), as are empty
// lists: omit an optional field to get its default rather than writing [].
// Quote strings that YAML 1.1 reads as booleans (a namespace named "no"):
// unquoted, they are errors.
//
// # Rule evaluation
//
// Rules are tried in order. The first rule whose namespaces (and
// serviceAccounts, when given) match the pod decides: if any other
// condition of that rule fails, the request is denied with a message naming
// the rule and the condition; later rules are not consulted. This keeps a
// rule's restrictions from being bypassed by a broader rule further down.
// If no rule matches, the request is denied and the message names the
// closest rule (the one failing the fewest conditions, first in file on
// ties) and why it did not match.
//
// Tracing requests (tracepoint, kprobe, kretprobe, uprobe, uretprobe,
// fentry, fexit) name an attachTo target and no interface or priority.
// Cgroup requests (cgroup_skb, cgroup_sock_addr, sock_ops) attach to the
// pod's own cgroup (a local request names one) and take no interface or
// priority either. Both kinds are allowed only by a rule that lists them
// in hooks: a rule written for interfaces never grants them, and a rule
// listing only them grants nothing on the node's interfaces. Interfaces
// and priorities apply to network requests only. attachTo patterns apply
// to every request that has an attachTo: a tracing target, or the socket
// operation of a cgroup_sock_addr request (connect4, sendmsg6, ...; when
// the volume names none, the one the program's section names). So a rule
// with attachTo patterns that lists cgroup_sock_addr must list its
// operations too ("connect*"); cgroup_skb and sock_ops have no attachTo
// and are not restricted by the patterns. A uprobe in the pod's own
// container is matched as container:NAME:PATH:SYMBOL (the driver builds
// that form), so host path patterns never grant container paths.
//
// A request whose hook is not known yet (the volume names no type; the
// image's labels will) passes the hooks condition of every rule: it is
// denied only when no rule could allow it for any hook. The driver asks
// again, with the hook, once the image is fetched; the same rule decides.
//
// With no policy file at all (Default), pods are denied and local requests
// are allowed, local oci: layouts included. A local section that is present
// but has no images field allows any image; once it lists images, the same
// matching rules as for pods apply.
//
// # Patterns
//
// Every pattern is a path.Match glob matched against the whole string, so
// "*" never crosses a "/". An image pattern may also end in "/**", meaning
// one or more further path elements ("registry.example/bpf/**" matches
// "registry.example/bpf/a" and "registry.example/bpf/a/b"); "**" alone
// matches every registry repository. "**" anywhere else is an error.
//
// Image patterns match the repository: the reference with its @digest and
// its :tag (a colon after the last "/") removed, so
// "localhost:5000/bpf/x:v1" is matched as "localhost:5000/bpf/x". A
// reference without a registry host is matched as written (no default registry
// host is added), and patterns therefore never carry a tag or digest.
//
// References of the form "oci:/path/to/layout[:tag]" name a local OCI
// layout. The path must be absolute and clean (no ".", ".." or "//"), since a
// ".." after a symlink resolves differently in the kernel than on paper. It
// is matched, with the "oci:" prefix, only against patterns that start with
// "oci:/": "*" or "**" alone never let a pod load from the node's
// filesystem. A digest, when present, must be "@sha256:" and 64 lowercase hex
// digits; anything else after "@" is refused rather than stripped.
package policy
