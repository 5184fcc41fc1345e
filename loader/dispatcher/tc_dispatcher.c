//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The TC dispatcher: one cls_bpf (direct-action) program per interface and
// direction that runs up to ten member programs in order, the same way as
// the XDP dispatcher. TC verdicts start at TC_ACT_UNSPEC (-1), so a verdict
// v continues the chain when bit v+1 of the slot's mask is set. The
// configuration follows bpfman's TC dispatcher, version 1.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define DISPATCHER_SLOTS 10
#define TC_DISPATCHER_VERSION 1
/* What an empty stub returns: bit 31 of a chain-call mask. */
#define TC_DISPATCHER_RETVAL 30

struct tc_dispatcher_config {
	__u8 num_progs_enabled;
	__u32 chain_call_actions[DISPATCHER_SLOTS];
	__u32 run_prios[DISPATCHER_SLOTS];
};

/* Written by the loader before the program is loaded. */
const volatile struct tc_dispatcher_config conf = {};

/*
 * A slot, as in the XDP dispatcher: the helper call that never runs marks
 * the stub as one that may change packet data, so that a member that does
 * (bpf_skb_store_bytes, bpf_skb_pull_data, ...) may replace it on kernels
 * that check (6.13, 6.12.y).
 */
#define SLOT_STUB(n)                                                 \
	__attribute__((noinline)) int prog##n(struct __sk_buff *skb) \
	{                                                            \
		volatile int verdict = TC_DISPATCHER_RETVAL;         \
		if (verdict != TC_DISPATCHER_RETVAL)                 \
			bpf_skb_pull_data(skb, 0);                   \
		return verdict;                                      \
	}

SLOT_STUB(0)
SLOT_STUB(1)
SLOT_STUB(2)
SLOT_STUB(3)
SLOT_STUB(4)
SLOT_STUB(5)
SLOT_STUB(6)
SLOT_STUB(7)
SLOT_STUB(8)
SLOT_STUB(9)

static __always_inline int proceeds(int verdict, __u32 mask)
{
	__u32 bit = (__u32)(verdict + 1);

	return bit < 32 && ((1U << bit) & mask);
}

#define RUN_SLOT(n)                                                \
	if (conf.num_progs_enabled <= n)                           \
		return TC_ACT_OK;                                  \
	verdict = prog##n(skb);                                    \
	if (!proceeds(verdict, conf.chain_call_actions[n]))        \
		return verdict;

SEC("tc")
int tc_dispatcher(struct __sk_buff *skb)
{
	int verdict;

	RUN_SLOT(0)
	RUN_SLOT(1)
	RUN_SLOT(2)
	RUN_SLOT(3)
	RUN_SLOT(4)
	RUN_SLOT(5)
	RUN_SLOT(6)
	RUN_SLOT(7)
	RUN_SLOT(8)
	RUN_SLOT(9)
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
