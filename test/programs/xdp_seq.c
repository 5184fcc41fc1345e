//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// xdp_seq checks that no frame escapes it: test frames (EtherType 0x88b5)
// carry a big-endian sequence number after the Ethernet header, and every
// number that does not follow the previous one counts as a gap. Tests kill
// and restart the daemon while frames flow and expect no gap.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct seqstate {
	__u64 count;
	__u64 gaps;
	__u32 last;
	__u32 started;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct seqstate);
} seq_map SEC(".maps");

SEC("xdp")
int xdp_seq(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 key = 0, seq;
	struct seqstate *s;

	if (data + sizeof(*eth) + sizeof(__u32) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(0x88b5))
		return XDP_PASS;
	seq = bpf_ntohl(*(__u32 *)(data + sizeof(*eth)));
	s = bpf_map_lookup_elem(&seq_map, &key);
	if (!s)
		return XDP_PASS;
	if (s->started && seq != s->last + 1)
		s->gaps++;
	s->started = 1;
	s->last = seq;
	s->count++;
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
