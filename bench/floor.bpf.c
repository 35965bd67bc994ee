// SPDX-License-Identifier: GPL-2.0
/* The floor for the cost benchmark: a timestamp and one per-thread map operation per event. */
#include <uapi/linux/ptrace.h>

BPF_HASH(floor_start, u32, u64, 16384);

int floor_exit(struct bpf_raw_tracepoint_args *ctx)
{
	u32 tid = bpf_get_current_pid_tgid();
	u64 ts = bpf_ktime_get_ns();
	floor_start.update(&tid, &ts);
	return 0;
}

int floor_entry(struct bpf_raw_tracepoint_args *ctx)
{
	u32 tid = bpf_get_current_pid_tgid();
	u64 *tsp = floor_start.lookup(&tid);
	if (tsp && bpf_ktime_get_ns() < *tsp)
		return 1;
	return 0;
}
