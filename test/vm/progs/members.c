//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Dispatcher members for the VM tests. Each loaded copy gets its own
// member_id and verdict (globals set before load). A member appends its id
// to a trail in the frame, after the Ethernet header:
//
//	frame[14]        how many members ran so far (n)
//	frame[15 + i]    the id of the i-th member that ran
//
// and counts, in positions[n], the frames on which it ran as the n-th
// member. So a test run shows the order in the output frame, and real
// traffic shows it in the maps: a member in slot k counts every frame in
// positions[k]. positions[15] counts frames too short for a trail.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define TRAIL_OFF 14
#define TRAIL_MAX 12
#define SHORT_FRAME 15

const volatile __u32 member_id = 0;
const volatile __s32 verdict = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} positions SEC(".maps");

static __always_inline void count(__u32 pos)
{
	__u64 *v = bpf_map_lookup_elem(&positions, &pos);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline int xdp_trail(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;
	__u8 *slot;
	__u8 n;

	if (data + TRAIL_OFF + 1 > end) {
		count(SHORT_FRAME);
		return verdict;
	}
	n = data[TRAIL_OFF];
	if (n >= TRAIL_MAX) {
		count(SHORT_FRAME);
		return verdict;
	}
	slot = data + TRAIL_OFF + 1 + n;
	if (slot + 1 > end) {
		count(SHORT_FRAME);
		return verdict;
	}
	count(n);
	*slot = member_id;
	data[TRAIL_OFF] = n + 1;
	return verdict;
}

SEC("xdp")
int xdp_member(struct xdp_md *ctx)
{
	return xdp_trail(ctx);
}

/* The same, declaring multi-buffer (frags) support. */
SEC("xdp.frags")
int xdp_member_frags(struct xdp_md *ctx)
{
	return xdp_trail(ctx);
}

SEC("tc")
int tc_member(struct __sk_buff *skb)
{
	__u8 n, id = member_id;

	if (bpf_skb_load_bytes(skb, TRAIL_OFF, &n, 1) < 0 || n >= TRAIL_MAX) {
		count(SHORT_FRAME);
		return verdict;
	}
	count(n);
	bpf_skb_store_bytes(skb, TRAIL_OFF + 1 + n, &id, 1, 0);
	n++;
	bpf_skb_store_bytes(skb, TRAIL_OFF, &n, 1, 0);
	return verdict;
}

/*
 * The smallest useful members, for the cost benchmark: count the frame,
 * return the verdict.
 */
SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	count(0);
	return verdict;
}

SEC("tc")
int tc_count(struct __sk_buff *skb)
{
	count(0);
	return verdict;
}

char _license[] SEC("license") = "Dual BSD/GPL";
