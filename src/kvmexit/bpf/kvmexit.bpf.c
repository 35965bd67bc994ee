// SPDX-License-Identifier: GPL-2.0
/*
 * kvmexit: pair every kvm_exit with the next kvm_entry on the same thread, in the kernel.
 *
 * Compile-time options (passed by kvmexit.sources.live as -D flags):
 *   LAYOUT_ARM64        raw tracepoints; kvm_exit args (ret, esr_ec, pc) at EXIT_RET_ARG and
 *                       EXIT_EC_ARG; EXIT_EC_ARG < 0 means the class comes from kvm_trap_enter
 *                       (openEuler 5.10+), arg TRAP_EC_ARG.
 *   LAYOUT_X86          perf tracepoint on kvm_exit; record offsets X86_REASON_OFF, X86_ISA_OFF.
 *   SYNTHETIC_X86       x86 logic on a raw tracepoint with args (exit_reason, isa): tests only,
 *                       since BPF_PROG_TEST_RUN cannot run perf tracepoint programs.
 *   FILTER_TGID, FILTER_TID   only threads present in tgid_filter / tid_filter.
 *   MAX_THREADS, MAX_KEYS     map sizes.
 *
 * Stays within what 4.19 verifies: no loops, no global data, no ring buffer.
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include "kvmexit.h"

#define ARM_EXIT_WITH_SERROR_BIT 31
#define ARM_EXCEPTION_TRAP 2

/*
 * What every attached program returns. On a classic tracepoint (x86), 0 would stop the event from
 * reaching perf (perf_trace_run_bpf_submit): perf kvm stat, perf stat -e kvm:kvm_exit and kvm_stat
 * would go blind while kvmexit is attached. Raw tracepoints ignore it.
 */
#define PASS_EVENT_ON 1

BPF_HASH(starts, u32, struct kvmexit_start, MAX_THREADS);
BPF_HASH(stats, struct kvmexit_key, struct kvmexit_value, MAX_KEYS);
BPF_PERCPU_ARRAY(counters, u64, KVMEXIT_NR_COUNTERS);
/* A key seen for the first time: user space names its process now, while it still runs. */
BPF_PERF_OUTPUT(new_keys);
#ifdef FILTER_TGID
BPF_HASH(tgid_filter, u32, u8, 4096);
#endif
#ifdef FILTER_TID
BPF_HASH(tid_filter, u32, u8, 4096);
#endif

static __always_inline void count(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++; /* per-CPU slot: no atomic needed */
}

static __always_inline int wanted(u64 id)
{
#ifdef FILTER_TGID
	u32 tgid = id >> 32;
	if (!tgid_filter.lookup(&tgid))
		return 0;
#endif
#ifdef FILTER_TID
	u32 tid = id;
	if (!tid_filter.lookup(&tid))
		return 0;
#endif
	return 1;
}

static __always_inline struct kvmexit_value *value_for(void *ctx, struct kvmexit_start *s, u32 tid)
{
	struct kvmexit_key key = {.tgid = s->tgid, .tid = tid, .code = s->code, .detail = s->detail};
	struct kvmexit_value *v = stats.lookup(&key);
	if (v)
		return v;
	struct kvmexit_value zero = {};
	zero.min_ns = ~0ULL;
	bpf_get_current_comm(&zero.comm, sizeof(zero.comm));
	if (stats.insert(&key, &zero)) {
		count(KVMEXIT_STATS_MAP_FULL);
		return 0;
	}
	new_keys.perf_submit(ctx, &key, sizeof(key));
	return stats.lookup(&key);
}

/*
 * A thread's start slot is created on its first exit and then reused: ts != 0 while an exit waits
 * for its entry, 0 otherwise. Reusing it saves a hash update and a delete per exit; user space
 * removes the slots of threads that have exited, so thread churn cannot fill the map.
 */
static __always_inline int on_exit(void *ctx, u32 code, u32 detail)
{
	u64 now = bpf_ktime_get_ns();
	u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id))
		return 0;
	u32 tid = id;
	struct kvmexit_start *s = starts.lookup(&tid);
	if (!s) {
		struct kvmexit_start fresh = {.ts = now, .tgid = id >> 32, .code = code, .detail = detail};
		if (starts.update(&tid, &fresh))
			count(KVMEXIT_START_MAP_FULL);
		return 0;
	}
	if (s->ts) {
		/* The previous exit never saw its entry (missed event): keep it visible. */
		struct kvmexit_value *v = value_for(ctx, s, tid);
		if (v)
			v->unfinished++;
	}
	s->ts = now;
	s->halt_ns = 0;
	s->tgid = id >> 32;
	s->code = code;
	s->detail = detail;
	return 0;
}

static __always_inline int on_entry(void *ctx)
{
	u64 now = bpf_ktime_get_ns();
	u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id))
		return 0;
	u32 tid = id;
	struct kvmexit_start *s = starts.lookup(&tid);
	if (!s || !s->ts) {
		count(KVMEXIT_UNPAIRED_ENTRIES);
		return 0;
	}
	u64 delta = now - s->ts;
	s->ts = 0;
	struct kvmexit_value *v = value_for(ctx, s, tid);
	if (!v)
		return 0;
	v->pairs++;
	v->total_ns += delta;
	v->halt_ns += s->halt_ns;
	if (delta < v->min_ns)
		v->min_ns = delta;
	if (delta > v->max_ns)
		v->max_ns = delta;
	u32 slot = bpf_log2l(delta);
	if (slot >= KVMEXIT_HIST_SLOTS)
		slot = KVMEXIT_HIST_SLOTS - 1;
	/*
	 * Keep the bound check on the register that indexes the array: clang may clamp a copy,
	 * and the 6.1 verifier then rejects the access as unbounded.
	 */
	asm volatile("" : "+r"(slot));
	if (slot < KVMEXIT_HIST_SLOTS)
		v->hist[slot]++;
	return 0;
}

#if defined(LAYOUT_ARM64)
static __always_inline u32 arm64_detail(u32 ret, u32 ec)
{
	/* What the upstream tracepoint record does: mask the SError bit, zero a stale EC. */
	u32 serror = ret & (1U << ARM_EXIT_WITH_SERROR_BIT);
	u32 code = ret & ~(1U << ARM_EXIT_WITH_SERROR_BIT);
	return (code == ARM_EXCEPTION_TRAP ? (ec & 0x3f) : 0) | serror;
}

int kvmexit_exit(struct bpf_raw_tracepoint_args *ctx)
{
	u32 ret = ctx->args[EXIT_RET_ARG];
#if EXIT_EC_ARG >= 0
	u32 ec = ctx->args[EXIT_EC_ARG];
#else
	u32 ec = 0; /* filled in by kvm_trap_enter */
#endif
	on_exit(ctx, ret & ~(1U << ARM_EXIT_WITH_SERROR_BIT), arm64_detail(ret, ec));
	return PASS_EVENT_ON;
}

#if EXIT_EC_ARG < 0
int kvmexit_trap(struct bpf_raw_tracepoint_args *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id;
	struct kvmexit_start *s = starts.lookup(&tid);
	if (s && s->ts && s->code == ARM_EXCEPTION_TRAP)
		s->detail = (s->detail & (1U << ARM_EXIT_WITH_SERROR_BIT)) |
			    ((u32)ctx->args[TRAP_EC_ARG] & 0x3f);
	return PASS_EVENT_ON;
}
#endif
#elif defined(SYNTHETIC_X86)
int kvmexit_exit(struct bpf_raw_tracepoint_args *ctx)
{
	on_exit(ctx, ctx->args[0], ctx->args[1]);
	return PASS_EVENT_ON;
}
#elif defined(LAYOUT_X86)
int kvmexit_exit(void *ctx)
{
	/* The record is built by the kernel: exit_reason and isa are read at their format offsets. */
	u32 reason = *(u32 *)((char *)ctx + X86_REASON_OFF);
	u32 isa = *(u32 *)((char *)ctx + X86_ISA_OFF);
	on_exit(ctx, reason, isa);
	return PASS_EVENT_ON;
}
#else
#error "no LAYOUT_* defined"
#endif

#if defined(LAYOUT_X86) && !defined(SYNTHETIC_X86)
int kvmexit_entry(void *ctx)
#else
int kvmexit_entry(struct bpf_raw_tracepoint_args *ctx)
#endif
{
	on_entry(ctx);
	return PASS_EVENT_ON;
}

/* kvm_vcpu_wakeup(ns, waited, valid): time the vCPU spent halted inside the open exit. */
static __always_inline int add_halt(u64 ns)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id;
	struct kvmexit_start *s = starts.lookup(&tid);
	if (s && s->ts)
		s->halt_ns += ns;
	return PASS_EVENT_ON;
}

int kvmexit_wakeup(struct bpf_raw_tracepoint_args *ctx)
{
	return add_halt(ctx->args[0]);
}

#ifdef WAKEUP_NS_OFF
/* The same from the classic tracepoint's record, for kernels that cannot attach a raw
 * tracepoint to a module's tracepoint (before 5.0; x86's kvm is a module). */
int kvmexit_wakeup_tp(void *ctx)
{
	return add_halt(*(u64 *)((char *)ctx + WAKEUP_NS_OFF));
}
#endif
