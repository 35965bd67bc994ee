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

/* A second floor, for kvmexit's slot reuse: the exit looks the thread's slot up and writes the
 * timestamp in place (an update only the first time), the entry looks it up. */
BPF_HASH(floor2_slot, u32, u64, 16384);

int floor2_exit(struct bpf_raw_tracepoint_args *ctx)
{
	u32 tid = bpf_get_current_pid_tgid();
	u64 ts = bpf_ktime_get_ns();
	u64 *slot = floor2_slot.lookup(&tid);
	if (slot)
		*slot = ts;
	else
		floor2_slot.update(&tid, &ts);
	return 0;
}

int floor2_entry(struct bpf_raw_tracepoint_args *ctx)
{
	u32 tid = bpf_get_current_pid_tgid();
	u64 *tsp = floor2_slot.lookup(&tid);
	if (tsp && bpf_ktime_get_ns() < *tsp)
		return 1;
	return 0;
}

/* Nothing at all: what running a program through BPF_PROG_TEST_RUN with run-time stats costs by
 * itself (the dispatch and the stats' two clock reads), the same for every variant. */
int empty_exit(struct bpf_raw_tracepoint_args *ctx)
{
	return 0;
}

int empty_entry(struct bpf_raw_tracepoint_args *ctx)
{
	return 0;
}

/* What any pairing needs at each event and nothing else: the thread's id and the time. */
int clock_exit(struct bpf_raw_tracepoint_args *ctx)
{
	return bpf_get_current_pid_tgid() + bpf_ktime_get_ns() == 1;
}

int clock_entry(struct bpf_raw_tracepoint_args *ctx)
{
	return bpf_get_current_pid_tgid() + bpf_ktime_get_ns() == 1;
}
