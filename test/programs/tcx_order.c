//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// tcx_order proves the order in which TCX runs bpfmount's programs: each copy
// is loaded with its own id (a global set through the `globals` attribute),
// records the mark it finds on the packet, then stamps its id on it. A
// program that runs second therefore sees the first one's id.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#ifndef TCX_NEXT
#define TCX_NEXT -1
#endif

const volatile __u32 order_id = 0;

struct order {
	__u64 hits;
	__u32 seen_mark;
	__u32 pad;
};

// ORDER_ENTRIES sizes order_map; the tcxorderwide object sets it to 2, a
// map of another shape, to test what an upgrade in place does with it.
#ifndef ORDER_ENTRIES
#define ORDER_ENTRIES 1
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ORDER_ENTRIES);
	__type(key, __u32);
	__type(value, struct order);
} order_map SEC(".maps");

SEC("tc")
int tcx_order(struct __sk_buff *skb)
{
	__u32 key = 0;
	struct order *o = bpf_map_lookup_elem(&order_map, &key);

	if (o) {
		__sync_fetch_and_add(&o->hits, 1);
		o->seen_mark = skb->mark;
	}
	skb->mark = order_id;
	return TCX_NEXT;
}

char _license[] SEC("license") = "Dual BSD/GPL";
