//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// cgroup_hooks are the smallest programs that show each cgroup hook ran:
// each counts its runs in hits[0]. count_skb lets every packet through,
// deny_connect refuses every connect (returning 0 makes connect fail with
// EPERM), count_sockops only counts.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

static __always_inline void count(void)
{
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&hits, &key);

	if (n)
		__sync_fetch_and_add(n, 1);
}

SEC("cgroup_skb/egress")
int count_skb(struct __sk_buff *skb)
{
	count();
	return 1;
}

SEC("cgroup/connect4")
int deny_connect(struct bpf_sock_addr *ctx)
{
	count();
	return 0;
}

SEC("sockops")
int count_sockops(struct bpf_sock_ops *skops)
{
	count();
	return 1;
}

char _license[] SEC("license") = "Dual BSD/GPL";
