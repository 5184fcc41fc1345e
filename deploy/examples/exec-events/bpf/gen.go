// Package bpf holds the example exec-event reporter: its C source, the
// object bpf2go compiled from it (committed, so a build needs no clang) and
// the generated Go type that readers use to decode the events.
package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel -type event Execevents exec_events.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
