package dispatcher

// The objects are committed, so a build needs no clang; `make generate`
// rebuilds them.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel Xdpdispatcher xdp_dispatcher.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel Tcdispatcher tc_dispatcher.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel Probe probe.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
