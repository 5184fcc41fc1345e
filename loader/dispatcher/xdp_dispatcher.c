//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The XDP dispatcher: one XDP program per interface that runs up to ten
// member programs in order. Each member replaces one of the stubs
// prog0..prog9 with freplace (BPF_PROG_TYPE_EXT). The configuration lives in
// .rodata in libxdp's dispatcher format, version 2, so libxdp's readers
// understand it; the verifier sees the frozen values and drops the slots
// beyond num_progs_enabled.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define DISPATCHER_SLOTS 10
#define XDP_DISPATCHER_MAGIC 236 /* 'X' + 'D' + 'P' */
#define XDP_DISPATCHER_VERSION 2
/* What an empty stub returns: the top bit of a chain-call mask. */
#define XDP_DISPATCHER_RETVAL 31

struct xdp_dispatcher_config {
	__u8 magic;
	__u8 dispatcher_version;
	__u8 num_progs_enabled;
	__u8 is_xdp_frags;
	__u32 chain_call_actions[DISPATCHER_SLOTS];
	__u32 run_prios[DISPATCHER_SLOTS];
	__u32 program_flags[DISPATCHER_SLOTS];
};

/* Written by the loader before the program is loaded. */
const volatile struct xdp_dispatcher_config conf = {};

/*
 * A slot. Global and never inlined, so that it has its own BTF function
 * for freplace to target; the volatile return keeps the compiler from
 * folding the constant into the caller.
 *
 * Kernels since 6.13 (and 6.12.y stable) refuse an extension that may
 * change packet data (bpf_xdp_adjust_head and the like) in place of a
 * function that may not, judging by the helper calls the function holds.
 * The call below never runs (verdict is never anything but the constant
 * just stored) but marks every stub as one that may, so any member can fill
 * it.
 */
#define SLOT_STUB(n)                                               \
	__attribute__((noinline)) int prog##n(struct xdp_md *ctx)  \
	{                                                          \
		volatile int verdict = XDP_DISPATCHER_RETVAL;      \
		if (verdict != XDP_DISPATCHER_RETVAL)              \
			bpf_xdp_adjust_head(ctx, 0);               \
		return verdict;                                    \
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

/* Whether verdict is one of the actions after which the chain goes on. */
static __always_inline int proceeds(int verdict, __u32 mask)
{
	return (__u32)verdict < 32 && ((1U << verdict) & mask);
}

#define RUN_SLOT(n)                                                \
	if (conf.num_progs_enabled <= n)                           \
		return XDP_PASS;                                   \
	verdict = prog##n(ctx);                                    \
	if (!proceeds(verdict, conf.chain_call_actions[n]))        \
		return verdict;

SEC("xdp")
int xdp_dispatcher(struct xdp_md *ctx)
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
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
