// SPDX-License-Identifier: GPL-2.0
/*
 * A faithful re-implementation of the BPF logic of the original kvmexit-aarch64.py (Kylin V10),
 * for the cost benchmark only, on the same attach type as kvmexit (raw tracepoints, args
 * ret, esr_ec, vcpu_pc). Its flaws are kept on purpose: keyed by esr_ec alone, comm in the key,
 * counted at exit (so unmatched exits inflate the average's divisor), min/max collected.
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

struct orig_key_t {
	u32 tgid;
	u32 tid;
	u32 esr_ec;
	char comm[TASK_COMM_LEN];
};

struct orig_val_t {
	u64 count;
	u64 total_ns;
	u64 min_ns;
	u64 max_ns;
};

BPF_HASH(orig_start, u32, u64, 16384);
BPF_HASH(orig_ec, u32, u32, 16384);
BPF_HASH(orig_stats, struct orig_key_t, struct orig_val_t, 65536);

int orig_exit(struct bpf_raw_tracepoint_args *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id;
	u64 ts = bpf_ktime_get_ns();
	u32 ec = ctx->args[1];
	orig_start.update(&tid, &ts);
	orig_ec.update(&tid, &ec);

	struct orig_key_t key = {};
	key.tgid = id >> 32;
	key.tid = tid;
	key.esr_ec = ec;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	struct orig_val_t zero = {}, *val;
	val = orig_stats.lookup_or_try_init(&key, &zero);
	if (val)
		val->count++;
	return 0;
}

int orig_entry(struct bpf_raw_tracepoint_args *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id;
	u64 *tsp = orig_start.lookup(&tid);
	if (!tsp)
		return 0;
	u32 *ecp = orig_ec.lookup(&tid);
	if (!ecp)
		return 0;
	u64 delta = bpf_ktime_get_ns() - *tsp;

	struct orig_key_t key = {};
	key.tgid = id >> 32;
	key.tid = tid;
	key.esr_ec = *ecp;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	struct orig_val_t *val = orig_stats.lookup(&key);
	if (val) {
		val->total_ns += delta;
		if (val->min_ns == 0 || delta < val->min_ns)
			val->min_ns = delta;
		if (delta > val->max_ns)
			val->max_ns = delta;
	}
	orig_start.delete(&tid);
	orig_ec.delete(&tid);
	return 0;
}
