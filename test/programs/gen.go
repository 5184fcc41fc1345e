// Package programs holds the eBPF programs the tests load: C sources and the
// objects bpf2go compiled from them (committed, so tests need no clang).
package programs

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel -type order Tcxorder tcx_order.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel Tcxorderwide tcx_order.c -- -O2 -g -Wall -Werror -DORDER_ENTRIES=2 -I/usr/include/x86_64-linux-gnu
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel -type seqstate Xdpseq xdp_seq.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel Cgrouphooks cgroup_hooks.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel Tracecount trace_count.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
