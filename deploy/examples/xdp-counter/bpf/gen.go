// Package bpf holds the example XDP counter: its C source, the object bpf2go
// compiled from it (committed, so a build needs no clang) and the generated
// Go types that readers use to decode xdp_stats_map.
package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel -type datarec Xdpcounter xdp_counter.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
