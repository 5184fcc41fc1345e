//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// exec_events reports every exec on the node through a ring buffer: the
// process ID, user, command name and the path of the executed file. A
// consumer reads them from the events map, which the volume exposes.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define COMM_LEN 16
#define PATH_LEN 256

struct event {
	__u32 pid;
	__u32 uid;
	char comm[COMM_LEN];
	char filename[PATH_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__type(value, struct event); // records the event layout in BTF for readers
} events SEC(".maps");

// The fields of the sched_process_exec tracepoint (see its format file
// under /sys/kernel/tracing/events/sched/sched_process_exec).
struct sched_process_exec_args {
	__u16 common_type;
	__u8 common_flags;
	__u8 common_preempt_count;
	__s32 common_pid;
	__u32 filename_loc; // __data_loc: offset in the low 16 bits
	__s32 pid;
	__s32 old_pid;
};

SEC("tracepoint/sched/sched_process_exec")
int exec_events(struct sched_process_exec_args *ctx)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e)
		return 0; // the ring is full: the consumer is behind
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (void *)ctx + (ctx->filename_loc & 0xffff));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
