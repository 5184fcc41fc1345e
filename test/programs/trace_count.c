//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// trace_count counts the runs of each tracing hook: one program per hook,
// each adding one to its own slot of counts, so a test sees which hook
// fired. The attach targets in the section names are placeholders: the
// volume's attachTo sets the real ones.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

enum slot {
	SLOT_TRACEPOINT,
	SLOT_KPROBE,
	SLOT_KRETPROBE,
	SLOT_UPROBE,
	SLOT_URETPROBE,
	SLOT_FENTRY,
	SLOT_FEXIT,
	SLOT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SLOT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline int bump(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&counts, &slot);

	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}

SEC("tracepoint/sched/sched_process_exec")
int count_tracepoint(void *ctx) { return bump(SLOT_TRACEPOINT); }

SEC("kprobe/placeholder")
int count_kprobe(void *ctx) { return bump(SLOT_KPROBE); }

SEC("kretprobe/placeholder")
int count_kretprobe(void *ctx) { return bump(SLOT_KRETPROBE); }

SEC("uprobe/placeholder")
int count_uprobe(void *ctx) { return bump(SLOT_UPROBE); }

SEC("uretprobe/placeholder")
int count_uretprobe(void *ctx) { return bump(SLOT_URETPROBE); }

SEC("fentry/placeholder")
int count_fentry(void *ctx) { return bump(SLOT_FENTRY); }

SEC("fexit/placeholder")
int count_fexit(void *ctx) { return bump(SLOT_FEXIT); }

char LICENSE[] SEC("license") = "GPL";
