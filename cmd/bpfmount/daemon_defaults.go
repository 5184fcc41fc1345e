//go:build !bpfmount_cli

package main

// Defaults of the daemon's directories.
const (
	defaultStateDir   = "/run/bpfmount"
	defaultBPFFSRoot  = "/sys/fs/bpf/bpfmount"
	defaultImageCache = "/var/cache/bpfmount"
)
