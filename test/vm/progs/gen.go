// Package progs holds the eBPF programs the VM tests chain: C source and
// the object bpf2go compiled from it (committed, so tests need no clang).
package progs

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel Members members.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
