// SPDX-License-Identifier: GPL-2.0
/*
 * Naive pairing, a second baseline for the cost benchmark (not the original's logic: that is
 * original_kvmexit_aarch64.bpf.c). What a first attempt at per-thread pairing often looks like:
 * at exit, updates of a start-time map and a class map and a stats lookup-or-init keyed with the
 * comm; at entry, two lookups, a stats lookup and two deletes. Raw tracepoints, args
 * (ret, esr_ec, vcpu_pc), like kvmexit.
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

struct naive_key_t {
	u32 tgid;
	u32 tid;
	u32 esr_ec;
	char comm[TASK_COMM_LEN];
};

struct naive_val_t {
	u64 count;
	u64 total_ns;
	u64 min_ns;
	u64 max_ns;
};

BPF_HASH(naive_start, u32, u64, 16384);
BPF_HASH(naive_ec, u32, u32, 16384);
BPF_HASH(naive_stats, struct naive_key_t, struct naive_val_t, 65536);

int naive_exit(struct bpf_raw_tracepoint_args *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id;
	u64 ts = bpf_ktime_get_ns();
	u32 ec = ctx->args[1];
	naive_start.update(&tid, &ts);
	naive_ec.update(&tid, &ec);

	struct naive_key_t key = {};
	key.tgid = id >> 32;
	key.tid = tid;
	key.esr_ec = ec;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	struct naive_val_t zero = {}, *val;
	val = naive_stats.lookup_or_try_init(&key, &zero);
	if (val)
		val->count++;
	return 0;
}

int naive_entry(struct bpf_raw_tracepoint_args *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id;
	u64 *tsp = naive_start.lookup(&tid);
	if (!tsp)
		return 0;
	u32 *ecp = naive_ec.lookup(&tid);
	if (!ecp)
		return 0;
	u64 delta = bpf_ktime_get_ns() - *tsp;

	struct naive_key_t key = {};
	key.tgid = id >> 32;
	key.tid = tid;
	key.esr_ec = *ecp;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	struct naive_val_t *val = naive_stats.lookup(&key);
	if (val) {
		val->total_ns += delta;
		if (val->min_ns == 0 || delta < val->min_ns)
			val->min_ns = delta;
		if (delta > val->max_ns)
			val->max_ns = delta;
	}
	naive_start.delete(&tid);
	naive_ec.delete(&tid);
	return 0;
}
