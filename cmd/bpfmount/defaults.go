package main

// Defaults shared by the daemon and the client commands.
const (
	defaultEndpoint   = "unix:///run/bpfmount/csi.sock"
	defaultStateDir   = "/run/bpfmount"
	defaultBPFFSRoot  = "/sys/fs/bpf/bpfmount"
	defaultImageCache = "/var/cache/bpfmount"
)
