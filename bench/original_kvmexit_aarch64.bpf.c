// SPDX-License-Identifier: GPL-2.0
/*
 * The BPF logic of the original kvmexit-aarch64.py (Kylin V10), transcribed with its structure
 * for the benchmarks: the same maps, the same lookups per event, the same flaws.
 *
 * - One hash keyed by the u64 bpf_get_current_pid_tgid(); its value is the thread's struct:
 *   pid_tgid, comm, the last exit's class (last_exit_rs) and 64 per-class entries (indexed by
 *   esr_ec) of six u64: exit count, exit timestamp, entry timestamp, sum, max, min.
 * - A one-entry array holding a zeroed struct, copied in with an update on a thread's first exit.
 * - kvm_exit: drop if esr_ec >= 64; one lookup (on a miss: copy the zero struct in, look it up
 *   again, fill pid_tgid and comm); set last_exit_rs; count++ and the exit timestamp in its class.
 * - kvm_entry: one lookup (return on a miss or if last_exit_rs >= 64); the entry timestamp into
 *   that class; sum += entry - exit; max, and min (0 means unset).
 *
 * So: one hash lookup and one timestamp per event. Flaws kept: IRQ exits are counted under a
 * stale class; the count includes exits never paired, which the original's average divides by;
 * an entry without a new exit adds the old exit's time again.
 *
 * Attach type: the original used classic tracepoints (TRACEPOINT_PROBE, reading the record).
 * BPF_PROG_TEST_RUN cannot run those, so bench/bpf_cost.py compiles this with
 * ORIG_RAW_TRACEPOINT: the same logic on raw tracepoints, kvmexit's attach type, with esr_ec as
 * argument EXIT_EC_ARG. bench/e2e_cost.py also compiles it as a classic tracepoint program that
 * reads esr_ec from the record at ORIG_EC_OFF (the original's attach type).
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

#define ORIG_NR_EC 64

#ifndef EXIT_EC_ARG
#define EXIT_EC_ARG 1
#endif

struct orig_ec_stat {
	u64 count;
	u64 exit_ts;
	u64 entry_ts;
	u64 sum;
	u64 max;
	u64 min;
};

struct orig_thread {
	u64 pid_tgid;
	char comm[TASK_COMM_LEN];
	u64 last_exit_rs;
	struct orig_ec_stat ec[ORIG_NR_EC];
};

BPF_HASH(orig_threads, u64, struct orig_thread); /* bcc's default size, 10240, as the original */
BPF_ARRAY(orig_zero, struct orig_thread, 1);

#ifdef ORIG_RAW_TRACEPOINT
#define ORIG_CTX struct bpf_raw_tracepoint_args
#define ORIG_EC(ctx) ((u32)(ctx)->args[EXIT_EC_ARG])
#else
#define ORIG_CTX void
#define ORIG_EC(ctx) (*(u32 *)((char *)(ctx) + ORIG_EC_OFF))
#endif

int orig_exit(ORIG_CTX *ctx)
{
	u32 ec = ORIG_EC(ctx);
	if (ec >= ORIG_NR_EC)
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	struct orig_thread *t = orig_threads.lookup(&id);
	if (!t) {
		int zero = 0;
		struct orig_thread *z = orig_zero.lookup(&zero);
		if (!z)
			return 0;
		orig_threads.update(&id, z);
		t = orig_threads.lookup(&id);
		if (!t)
			return 0;
		t->pid_tgid = id;
		bpf_get_current_comm(&t->comm, sizeof(t->comm));
	}
	t->last_exit_rs = ec;
	/* The check again on the register that indexes (this kernel's verifier loses it across the
	 * lookups above): one compare, not in the original. */
	asm volatile("" : "+r"(ec));
	if (ec >= ORIG_NR_EC)
		return 0;
	t->ec[ec].count++;
	t->ec[ec].exit_ts = bpf_ktime_get_ns();
	return 0;
}

int orig_entry(ORIG_CTX *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct orig_thread *t = orig_threads.lookup(&id);
	if (!t)
		return 0;
	u64 rs = t->last_exit_rs;
	asm volatile("" : "+r"(rs));
	if (rs >= ORIG_NR_EC)
		return 0;
	u64 now = bpf_ktime_get_ns();
	struct orig_ec_stat *e = &t->ec[rs];
	e->entry_ts = now;
	u64 delta = now - e->exit_ts;
	e->sum += delta;
	if (delta > e->max)
		e->max = delta;
	if (e->min == 0 || delta < e->min)
		e->min = delta;
	return 0;
}
