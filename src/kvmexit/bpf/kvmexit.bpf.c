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
 *   FILTER_LEARN        with FILTER_TGID (--vm): processes not in tgid_filter yet are traced
 *                       until user space, notified by their first exit, has read their name and
 *                       written TGID_ALLOW or TGID_DENY (see "Learning --vm" below).
 *   MAX_THREADS, MAX_KEYS     map sizes; and the record's defines listed in kvmexit.h.
 *   KVMEXIT_ENTRY_CACHE, MAX_CPUS   the entry cache (default path, without the opt-in options
 *                       below; MAX_CPUS: the kernel's possible CPUs).
 *   KVMEXIT_RESIDENT    with the entry cache: resident threads (default path, except with --vm
 *                       or a kvm_trap_enter layout, whose exits user space or a second event
 *                       changes after kvm_exit); see "Resident threads" below.
 *   KVMEXIT_SUB         sub-reasons (opt-in): programs on the events inside an exit write the
 *                       slot's sub; a pair with one is also recorded in sub_stats (MAX_SUB_KEYS).
 *                       With the SUB_* defines of kvmexit.reasons.subreasons.bpf_defines.
 *   SLOW_LOG, SLOW_NS   the slow-exit log (opt-in): every pair longer than SLOW_NS ns is sent to
 *                       user space through the perf buffer slow_exits, with the guest PC
 *                       (arm64: kvm_exit arg EXIT_PC_ARG; x86: record offset X86_RIP_OFF) and the
 *                       ESR (arm64: the EC, and the whole ESR where kvm_handle_sys_reg or
 *                       kvm_guest_fault fires in the exit) or exit qualification (x86:
 *                       X86_INFO1_OFF); with KVMEXIT_SPLIT also the pair's split (vmm, preempted,
 *                       blocked, and halt_ns clamped as its row's). Without SLOW_LOG none of it
 *                       is compiled in.
 *
 * Stays within what 4.19 verifies: no loops, no global data, no ring buffer.
 *
 * Layout (one hash lookup per exit->entry pair on the default path, none for a resident thread;
 * the original tool makes two):
 *   threads       hash tid -> struct kvmexit_thread: the open exit and, in place, the statistics
 *                 rows of the reasons user space gave a row in reason_rows. Allocated on use
 *                 (BPF_F_NO_PREALLOC): a slot is sizeof(struct kvmexit_thread) per traced thread.
 *   reason_rows   array (code * RKEY_DETAILS + detail) -> row + 1 (0: no row); lookups of an
 *                 array are inlined by the verifier, so finding a row costs no map call.
 *   stats         hash (tgid, tid, code, detail) -> struct kvmexit_value: reasons without a row
 *                 (rare ones, unknown codes, SError-flagged exits). Never dropped, only slower.
 *   exit_cache    array cpu -> struct kvmexit_cpu (KVMEXIT_ENTRY_CACHE, the default path; MAX_CPUS
 *                 possible CPUs, 56 bytes each): the CPU's last kvm_exit (see "The entry cache");
 *                 with KVMEXIT_RESIDENT, MAX_CPUS + cpu: the CPU's resident record.
 *   cpu_owner, cpu_rows   arrays (KVMEXIT_RESIDENT): per CPU, the thread that owns its rows, and
 *                 the rows (KVMEXIT_NR_ROWS values per CPU; see "Resident threads").
 * kvm_exit: one lookup of the thread's slot (a miss: the first exit of a thread, which copies a
 * zeroed slot in), which folds the previous pair into its row and records the new open exit; none
 * for a thread owning its CPU's rows (KVMEXIT_RESIDENT: "Resident threads").
 * kvm_entry: on the CPU of its exit, only the CPU's record (no hash lookup); elsewhere the slot's
 * lookup and the row in place or, without one, the keyed map. Without the entry cache (the opt-in
 * paths), kvm_entry always looks the slot up and records the pair there.
 *
 * Sub-reasons (KVMEXIT_SUB, opt-in): events that fire inside the open exit (kvm_wfx_arm64,
 * kvm_hvc_arm64, kvm_handle_sys_reg, kvm_mmio, ...) look the slot up as kvmexit_wakeup does and
 * write slot->sub (0 = none). At entry, a pair with sub != 0 is recorded as always in its row (so
 * the reason's totals stay whole) and also in sub_stats (tgid, tid, code, detail, sub); without
 * KVMEXIT_SUB none of this is compiled. Parts of the exit time
 * (kernel, VMM, halted, preempted) are accumulated in the slot like halt_ns, and become fields
 * of STAT_FIELDS (one line each in kvmexit/model.py).
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include "kvmexit.h"

#define ARM_EXIT_WITH_SERROR_BIT 31
#define ARM_EXCEPTION_TRAP 2
#define HIST_SUB (1U << KVMEXIT_HIST_SUB_BITS)

/*
 * What every attached program returns. On a classic tracepoint (x86), 0 would stop the event from
 * reaching perf (perf_trace_run_bpf_submit): perf kvm stat, perf stat -e kvm:kvm_exit and kvm_stat
 * would go blind while kvmexit is attached. Raw tracepoints ignore it.
 */
#define PASS_EVENT_ON 1

BPF_F_TABLE("hash", u32, struct kvmexit_thread, threads, MAX_THREADS, BPF_F_NO_PREALLOC);
BPF_ARRAY(thread_zero, struct kvmexit_thread, 1); /* a zeroed slot, copied in on a first exit */
BPF_ARRAY(reason_rows, u32, RKEY_CODES * RKEY_DETAILS);
BPF_HASH(stats, struct kvmexit_key, struct kvmexit_value, MAX_KEYS);
BPF_ARRAY(value_zero, struct kvmexit_value, 1); /* a zeroed row, copied into stats on a new key */
BPF_PERCPU_ARRAY(counters, u64, KVMEXIT_NR_COUNTERS);
/* A thread (or a keyed reason) seen for the first time: user space names its process now. */
BPF_PERF_OUTPUT(new_keys);
#ifdef KVMEXIT_SUB
/* Pairs with a sub-reason, recorded a second time (their reason's row has them too). */
BPF_HASH(sub_stats, struct kvmexit_sub_key, struct kvmexit_value, MAX_SUB_KEYS);
#endif
#ifdef SLOW_LOG
BPF_PERF_OUTPUT(slow_exits);
#endif
#ifdef KVMEXIT_ENTRY_CACHE
#if defined(KVMEXIT_SUB) || defined(KVMEXIT_GUEST) || defined(KVMEXIT_SPLIT) || defined(SLOW_LOG)
#error "KVMEXIT_ENTRY_CACHE is the default path's: the opt-in paths pair at kvm_entry in the slot"
#endif
/* Each CPU's last kvm_exit (index bpf_get_smp_processor_id(); a plain array, whose lookups the
 * verifier inlines): see "The entry cache" below. */
#ifdef KVMEXIT_RESIDENT
BPF_ARRAY(exit_cache, struct kvmexit_cpu, 2 * MAX_CPUS); /* then the resident records, MAX_CPUS + cpu */
#else
BPF_ARRAY(exit_cache, struct kvmexit_cpu, MAX_CPUS);
#endif
#endif
#ifdef KVMEXIT_RESIDENT
#ifndef KVMEXIT_ENTRY_CACHE
#error "KVMEXIT_RESIDENT extends the entry cache"
#endif
BPF_ARRAY(cpu_owner, u64, MAX_CPUS); /* pid_tgid of the thread owning the CPU's rows; 0: none */
BPF_ARRAY(cpu_rows, struct kvmexit_value, MAX_CPUS * KVMEXIT_NR_ROWS); /* [cpu * NR_ROWS + row] */
#endif
#ifdef FILTER_TGID
BPF_HASH(tgid_filter, u32, u8, 4096); /* tgid -> TGID_ALLOW, or TGID_DENY (FILTER_LEARN only) */
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
	u8 *verdict = tgid_filter.lookup(&tgid);
#ifdef FILTER_LEARN
	if (verdict && *verdict == TGID_DENY)
		return 0; /* no verdict yet: traced provisionally (user space keeps or removes it) */
#else
	if (!verdict)
		return 0;
#endif
#endif
#ifdef FILTER_TID
	u32 tid = id;
	if (!tid_filter.lookup(&tid))
		return 0;
#endif
	return 1;
}

static __always_inline u32 row_of(u32 code, u32 detail)
{
	if (code >= RKEY_CODES || detail >= RKEY_DETAILS)
		return KVMEXIT_NR_ROWS;
	u32 rkey = code * RKEY_DETAILS + detail;
	u32 *r = reason_rows.lookup(&rkey);
	if (!r || *r == 0 || *r > KVMEXIT_NR_ROWS)
		return KVMEXIT_NR_ROWS;
	return *r - 1;
}

/* The statistics of the thread's open exit: its row in place, or its entry in the keyed map. */
static __always_inline struct kvmexit_value *value_for(void *ctx, struct kvmexit_thread *t, u32 tid)
{
	u32 row = t->row;
	/* Bound the register that indexes (clang may clamp a copy; the 6.1 verifier then refuses). */
	asm volatile("" : "+r"(row));
	if (row < KVMEXIT_NR_ROWS)
		return &t->rows[row];
	struct kvmexit_key key = {.tgid = t->tgid, .tid = tid, .code = t->code, .detail = t->detail};
	struct kvmexit_value *v = stats.lookup(&key);
	if (v)
		return v;
	u32 zero = 0;
	struct kvmexit_value *z = value_zero.lookup(&zero);
	if (!z)
		return 0;
	if (stats.insert(&key, z)) {
		count(KVMEXIT_STATS_MAP_FULL);
		return 0;
	}
	new_keys.perf_submit(ctx, &key, sizeof(key));
	return stats.lookup(&key);
}

/* The log-linear bucket of a duration (twin: kvmexit.model.hist_slot): exact below HIST_SUB ns,
 * then HIST_SUB buckets per power of two, so a bucket's width is at most 1/HIST_SUB of its
 * lower bound. */
static __always_inline u32 hist_slot(u64 ns)
{
	if (ns < HIST_SUB)
		return ns;
	u32 octave = bpf_log2l(ns) - 1; /* floor(log2(ns)) >= KVMEXIT_HIST_SUB_BITS */
	u32 shift = octave - KVMEXIT_HIST_SUB_BITS;
	u32 slot = HIST_SUB * (shift + 1) + ((ns >> shift) & (HIST_SUB - 1));
	return slot < KVMEXIT_HIST_SLOTS ? slot : KVMEXIT_HIST_SLOTS - 1;
}

/* sumsq += ns * ns, as a 128-bit number in two u64 words (low, high): ns^2 alone overflows a
 * u64 from 4.3 s. */
static __always_inline void add_square(u64 *sumsq, u64 ns)
{
	u64 high = 0, square;
	if (ns >> 32) { /* 4.3 s or more: ns^2 = hi^2 << 64 + 2 * cross << 32 + lo^2 */
		u64 hi = ns >> 32, lo = ns & 0xffffffff;
		u64 cross = hi * lo;
		u64 low = cross << 33;
		high = hi * hi + (cross >> 31);
		square = low + lo * lo;
		if (square < low)
			high++;
	} else {
		square = ns * ns;
	}
	u64 old = sumsq[0];
	sumsq[0] = old + square;
	if (sumsq[0] < old)
		high++;
	sumsq[1] += high;
}

/* One completed pair into a statistics record. */
/* Guest time and the split's parts of the pair closing now (issue 11; opt-in). */
static __always_inline void add_parts(struct kvmexit_value *v, struct kvmexit_thread *t)
{
#ifdef KVMEXIT_GUEST
	v->guest_ns += t->guest_ns;
#endif
#ifdef KVMEXIT_SPLIT
	v->preempt_ns += t->split.preempt_ns;
	v->blocked_ns += t->split.blocked_ns;
	v->vmm_ns += t->split.vmm_ns;
#endif
}

static __always_inline void add_pair(struct kvmexit_value *v, u64 delta, u64 halt_ns)
{
	if (!v->pairs || delta < v->min_ns)
		v->min_ns = delta;
	if (delta > v->max_ns)
		v->max_ns = delta;
	v->pairs++;
	v->total_ns += delta;
	v->halt_ns += halt_ns;
	add_square(v->sumsq, delta);
	u32 slot = hist_slot(delta);
	asm volatile("" : "+r"(slot));
	if (slot < KVMEXIT_HIST_SLOTS)
		v->hist[slot]++;
}

#ifdef KVMEXIT_SUB
/* The sub-reason record of the thread's open exit (which has t->sub != 0). */
static __always_inline struct kvmexit_value *sub_value_for(struct kvmexit_thread *t, u32 tid)
{
	struct kvmexit_sub_key key = {
		.tgid = t->tgid, .tid = tid, .code = t->code, .detail = t->detail, .sub = t->sub};
	struct kvmexit_value *v = sub_stats.lookup(&key);
	if (v)
		return v;
	u32 zero = 0;
	struct kvmexit_value *z = value_zero.lookup(&zero);
	if (!z)
		return 0;
	if (sub_stats.insert(&key, z)) {
		count(KVMEXIT_SUB_MAP_FULL);
		return 0;
	}
	return sub_stats.lookup(&key);
}
#endif
#ifdef KVMEXIT_SPLIT
/*
 * Where the exit time went (issue 11; opt-in, since sched_switch fires for every context switch of
 * the host). Parts of an exit, disjoint by precedence: a halt (kvm_vcpu_wakeup's ns, the window
 * [wakeup - ns, wakeup]) holds whatever happened inside it; off-CPU time outside halts is
 * preempted (switched out runnable) or blocked (sleeping); VMM is the on-CPU rest of the windows
 * from kvm_userspace_exit to the thread's next kvm event; the kernel's part is what is left.
 *
 * "Back in KVM_RUN" is approximated by the next kvm event of the thread (kvm_entry, or
 * kvm_vcpu_wakeup, or another kvm_userspace_exit): syscall tracepoints would say it exactly, but
 * they fire for every system call of the host and put every task on the slow syscall path. So
 * the VMM part also holds the few microseconds of KVM_RUN before the guest is entered.
 */
BPF_HASH(offcpu, u64, u32, MAX_THREADS); /* switched-out task (its task_struct address) -> tid */

static __always_inline void split_reset(struct kvmexit_split *s)
{
	s->off_ts = 0;
	s->vmm_ts = 0;
	s->vmm_off = 0;
	s->vmm_ns = 0;
	s->preempt_ns = 0;
	s->blocked_ns = 0;
	s->p_pre = 0;
	s->p_blk = 0;
	s->p_count = 0;
}

/* Pending off-CPU time turns out to be outside a halt. */
static __always_inline void split_commit(struct kvmexit_split *s, u64 pre, u64 blk)
{
	s->preempt_ns += pre;
	s->blocked_ns += blk;
}

/* The VMM window ends at `end` (the thread's next kvm event). */
static __always_inline void split_vmm_end(struct kvmexit_split *s, u64 end)
{
	if (!s->vmm_ts)
		return;
	if (end > s->vmm_ts + s->vmm_off)
		s->vmm_ns += end - s->vmm_ts - s->vmm_off;
	s->vmm_ts = 0;
	s->vmm_off = 0;
}

/*
 * A halt ended at `now` after `ns`: pending intervals that began inside [now - ns, now] belong to
 * it (an interval never straddles the halt's start, which runs on CPU). The last pending interval
 * also belongs to it when it was a sleep: that is the halt's own block, which often begins
 * microseconds after the halt's start (no polling), closer than this program's clock reading
 * trails the kernel's at the wakeup (measured in the emulated host: a sleep judged before its
 * halt, 6.7 ms of it, by that skew alone). With the first pending interval before the halt and
 * the last inside it, the ones between (a third or more) are taken as before it.
 */
static __always_inline void split_halt(struct kvmexit_split *s, u64 now, u64 ns)
{
	u64 start = now > ns ? now - ns : 0;
	split_vmm_end(s, start > s->vmm_ts ? start : s->vmm_ts);
	if (!s->p_count) {
	} else if (s->p_first >= start) {
		/* all inside the halt: already in halt_ns */
	} else if (s->p_last >= start || !s->l_pre) {
		/* the last inside (l_pre == 0: it was a sleep), the others before */
		split_commit(s, s->p_pre - s->l_pre, s->p_blk - s->l_blk);
	} else {
		split_commit(s, s->p_pre, s->p_blk);
	}
	s->p_pre = 0;
	s->p_blk = 0;
	s->p_count = 0;
}

/* At kvm_entry: the pair's parts, within its time (so the kernel's part, what is left, is never
 * negative even if a rule above misjudged an overlap), stay in the slot for add_parts (its row,
 * and its sub-reason's) until the next exit resets them. */
static __always_inline void split_close(struct kvmexit_thread *t, u64 now, u64 delta)
{
	struct kvmexit_split *s = &t->split;
	split_vmm_end(s, now);
	split_commit(s, s->p_pre, s->p_blk);
	if (t->halt_ns > delta) /* on_entry adds it to the row after this */
		t->halt_ns = delta;
	u64 left = delta - t->halt_ns;
	u64 pre = s->preempt_ns < left ? s->preempt_ns : left;
	left -= pre;
	u64 blk = s->blocked_ns < left ? s->blocked_ns : left;
	left -= blk;
	s->preempt_ns = pre;
	s->blocked_ns = blk;
	s->vmm_ns = s->vmm_ns < left ? s->vmm_ns : left;
}

/* kvm_userspace_exit(reason, errno): KVM_RUN returns to the VMM. */
static __always_inline int split_uexit(void)
{
	u32 tid = bpf_get_current_pid_tgid();
	struct kvmexit_thread *t = threads.lookup(&tid);
	if (t && t->ts) {
		u64 now = bpf_ktime_get_ns();
		split_vmm_end(&t->split, now);
		t->split.vmm_ts = now;
	}
	return PASS_EVENT_ON;
}

int kvmexit_uexit(struct bpf_raw_tracepoint_args *ctx)
{
	return split_uexit();
}

/* The classic tracepoint, for kernels that cannot attach a raw one to a module's (x86 before 5.0). */
int kvmexit_uexit_tp(void *ctx)
{
	return split_uexit();
}

/*
 * sched_switch: `prev` (the current thread) goes off CPU, `next` comes on. Tasks are told apart by
 * an opaque key (the raw tracepoint's task_struct address, the record's pid), so no task_struct
 * field is read: nothing here depends on the kernel headers' layout of struct task_struct.
 */
static __always_inline int split_switch(u64 prev_key, u64 next_key, u32 runnable)
{
	u32 tid = bpf_get_current_pid_tgid();
	struct kvmexit_thread *t = threads.lookup(&tid);
	if (t && t->ts) {
		t->split.off_ts = bpf_ktime_get_ns();
		t->split.runnable = runnable;
		offcpu.update(&prev_key, &tid);
	}
	u32 *back = offcpu.lookup(&next_key);
	if (!back)
		return PASS_EVENT_ON; /* the common case: two lookups that miss */
	u64 now = bpf_ktime_get_ns();
	u32 next_tid = *back;
	offcpu.delete(&next_key);
	struct kvmexit_thread *n = threads.lookup(&next_tid);
	if (!n || !n->ts || !n->split.off_ts)
		return PASS_EVENT_ON;
	struct kvmexit_split *s = &n->split;
	u64 off = now - s->off_ts;
	u64 pre = s->runnable ? off : 0;
	u64 blk = s->runnable ? 0 : off;
	if (!s->p_count)
		s->p_first = s->off_ts;
	s->p_last = s->off_ts;
	s->l_pre = pre;
	s->l_blk = blk;
	s->p_pre += pre;
	s->p_blk += blk;
	s->p_count++;
	if (s->vmm_ts)
		s->vmm_off += off;
	s->off_ts = 0;
	return PASS_EVENT_ON;
}

/*
 * sched_switch(preempt, prev, next, prev_state): the raw tracepoint, from 5.18 (its fourth
 * argument). Earlier prototypes have three arguments and refuse this program at attach (it reads
 * past them): kvmexit_switch_tp is used there. Runnable as ftrace prints it ("R" or "R+"): a
 * preemption, or a state with no reportable bit (__trace_sched_switch_state).
 */
#ifndef TASK_RTLOCK_WAIT
#define TASK_RTLOCK_WAIT 0
#endif
int kvmexit_switch(struct bpf_raw_tracepoint_args *ctx)
{
	u32 runnable = ctx->args[0] || !(ctx->args[3] & (TASK_REPORT | TASK_RTLOCK_WAIT));
	return split_switch(ctx->args[1], ctx->args[2], runnable);
}

#ifdef SWITCH_PREV_STATE_OFF
/* The classic tracepoint's record (every kernel): the state as ftrace prints it, R or R+
 * (TASK_REPORT_MAX) being runnable; pids at the format file's offsets. */
int kvmexit_switch_tp(void *ctx)
{
	u64 state = *(u64 *)((char *)ctx + SWITCH_PREV_STATE_OFF);
	u64 prev = *(u32 *)((char *)ctx + SWITCH_PREV_PID_OFF);
	u64 next = *(u32 *)((char *)ctx + SWITCH_NEXT_PID_OFF);
	return split_switch(prev, next, !(state & (TASK_REPORT_MAX - 1)));
}
#endif
#endif /* KVMEXIT_SPLIT */

#ifdef KVMEXIT_ENTRY_CACHE
/*
 * The entry cache (default path): kvm_exit, which looks the thread's slot up anyway, also writes
 * its CPU's record in exit_cache (pid_tgid, CPU_OPEN). kvm_entry on the same CPU by the same thread
 * finds the record without a hash lookup and only marks it CPU_CLOSED with its time; the pair is
 * folded into the slot's row at the thread's next kvm_exit, which looks the slot up anyway (or by
 * user space, reading exit_cache before the slots). So a pair costs one hash lookup, not two. In
 * KVM the next kvm_exit after a kvm_entry is on the same CPU (the vCPU cannot leave the CPU in
 * guest mode), so the record is still there; the other cases keep exact pairing:
 *  - kvm_entry on another CPU, or a record another thread's exit replaced: the hash lookup, and
 *    pairing in the slot as without the cache;
 *  - the slot is the truth for the open exit; t->cpu says which record is the thread's current
 *    one. Only the thread itself folds its pairs (its events run one at a time), and an entry
 *    closes the open exit only if it is not older than it (entry_ts >= ts), so a stale record
 *    or mail can never pair twice;
 *  - a record the thread left behind on another CPU is made stale for kvm_entry by an atomic add
 *    to its kills (an add from another CPU cannot undo the owner's writes; a spurious kill only
 *    sends an entry to the hash lookup);
 *  - a CPU_CLOSED record another thread's exit replaces before its thread's next exit (not in KVM:
 *    tests, a program attached or filtered in between) is mailed to its slot (mail_ts).
 */
static __always_inline struct kvmexit_cpu *cpu_record(u32 cpu)
{
	if (cpu >= MAX_CPUS)
		return 0; /* none (a slot's cpu is MAX_CPUS when its exit has no record) */
	return exit_cache.lookup(&cpu);
}

/* The time of the entry already seen for the slot's open exit (t->ts != 0), or 0. */
static __always_inline u64 seen_entry(struct kvmexit_thread *t, struct kvmexit_cpu *p, u64 id)
{
	u64 ts = t->ts;
	if (p) {
		u64 e = p->entry_ts;
		asm volatile("" ::: "memory"); /* read entry_ts, state, then id: id is written first */
		u32 state = p->state;
		asm volatile("" ::: "memory");
		if (p->id == id && state == CPU_CLOSED && e >= ts)
			return e;
	}
	u64 m = t->mail_ts;
	return m >= ts ? m : 0;
}

/* This CPU's record is about to hold another exit: a pending entry of another thread in it is
 * mailed to that thread's slot, if the record is still its current one. */
static __always_inline void evict(u32 tid, u64 exit_ts, u64 entry_ts, u32 cpu)
{
	struct kvmexit_thread *u = threads.lookup(&tid);
	if (u && u->cpu == cpu && u->ts == exit_ts && entry_ts >= exit_ts)
		u->mail_ts = entry_ts;
}

static __always_inline void kill(struct kvmexit_cpu *p, u64 id)
{
	if (p && p->id == id)
		__sync_fetch_and_add(&p->kills, 1);
}
#endif

#ifdef KVMEXIT_RESIDENT
/*
 * Resident threads (default path): the entry cache still makes a hash lookup per pair, at kvm_exit,
 * to fold the previous pair into the slot's row. A thread that owns its CPU's rows (cpu_owner: the
 * first thread to exit there, until user space sees it has ended) keeps its open exit in the CPU's
 * resident record (exit_cache[MAX_CPUS + cpu], written only by the owner) and folds pairs into
 * cpu_rows, on that CPU only: exit, wakeup and entry make no hash lookup at all. The slot says so
 * (resident, and which record: cpu, gen); user space adds the thread's cpu_rows to its slot's rows.
 * Whatever needs the slot (an exit or entry on another CPU, an exit without a row, two exits in a
 * row) first takes the open exit back into the slot (take_back, which kills the record as a
 * migration does) and goes on as without residency. Other threads on an owned CPU use its plain
 * record, the entry cache, as on any other CPU.
 */
static __always_inline struct kvmexit_cpu *resident_record(u32 cpu)
{
	if (cpu >= MAX_CPUS)
		return 0;
	u32 idx = MAX_CPUS + cpu;
	return exit_cache.lookup(&idx);
}

static __always_inline int live_resident(struct kvmexit_cpu *r, u64 id)
{
	return r->id == id && r->gen == r->kills;
}

/* The exit fast path: this CPU's resident record holds the thread's closed pair and the thread
 * owns the CPU's rows. Returns 1 when the exit is recorded. */
static __always_inline int resident_exit(u32 cpu, u64 id, u64 now, u32 code, u32 detail)
{
	struct kvmexit_cpu *c = resident_record(cpu);
	if (!c || !live_resident(c, id) || c->state != CPU_CLOSED)
		return 0;
	u64 *owner = cpu_owner.lookup(&cpu);
	u32 row = row_of(code, detail);
	u32 prev = c->row;
	if (!owner || *owner != id || row >= KVMEXIT_NR_ROWS || prev >= KVMEXIT_NR_ROWS)
		return 0;
	u32 idx = cpu * KVMEXIT_NR_ROWS + prev;
	c->state = 0; /* before the row: user space never sees the pair both pending and in it */
	asm volatile("" ::: "memory");
	struct kvmexit_value *v = cpu_rows.lookup(&idx);
	if (v)
		add_pair(v, c->entry_ts - c->exit_ts, c->halt_ns);
	c->exit_ts = now;
	c->halt_ns = 0;
	c->row = row;
	c->code = code;
	c->detail = detail;
	asm volatile("" ::: "memory");
	c->state = CPU_OPEN;
	return 1;
}

/* The thread's open exit, from its resident record back into its slot (t->ts, and the entry
 * already seen as mail_ts): from here on it is paired as without residency. */
static __always_inline void take_back(struct kvmexit_thread *t, u64 id)
{
	if (!t->resident)
		return;
	struct kvmexit_cpu *p = resident_record(t->cpu);
	u64 ts = 0, entry_ts = 0, halt_ns = 0;
	u32 code = 0, detail = 0, row = KVMEXIT_NR_ROWS;
	if (p && live_resident(p, id) && p->gen == t->gen) {
		u32 state = p->state;
		ts = state ? p->exit_ts : 0;
		entry_ts = state == CPU_CLOSED ? p->entry_ts : 0;
		halt_ns = p->halt_ns;
		code = p->code;
		detail = p->detail;
		row = p->row;
		__sync_fetch_and_add(&p->kills, 1); /* no longer the thread's open exit */
	}
	t->code = code;
	t->detail = detail;
	t->row = row;
	t->halt_ns = halt_ns;
	t->mail_ts = entry_ts;
	t->ts = ts;
	asm volatile("" ::: "memory");
	t->resident = 0; /* last: user space reads a resident slot's open exit from the record */
}

/* Whether the thread owns (or now claims) the rows of the CPU whose cpu_owner entry is `owner`.
 * Only programs on that CPU write it, and user space once the owner has ended. */
static __always_inline int owns_rows(u64 *owner, u64 id)
{
	if (!owner)
		return 0;
	if (*owner == 0)
		*owner = id;
	return *owner == id;
}
#endif

/* Returns the thread's slot holding the new open exit, or 0 (filtered out, map full). */
static __always_inline struct kvmexit_thread *on_exit(void *ctx, u32 code, u32 detail)
{
	u64 now = bpf_ktime_get_ns();
	u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id))
		return 0;
#ifdef KVMEXIT_ENTRY_CACHE
	u32 cpu = bpf_get_smp_processor_id();
#endif
#ifdef KVMEXIT_RESIDENT
	if (resident_exit(cpu, id, now, code, detail))
		return 0;
#endif
	u32 tid = id;
	int fresh = 0;
	struct kvmexit_thread *t = threads.lookup(&tid);
	if (!t) {
		fresh = 1;
		u32 zero = 0;
		struct kvmexit_thread *z = thread_zero.lookup(&zero);
		if (!z)
			return 0;
		if (threads.update(&tid, z)) {
			count(KVMEXIT_START_MAP_FULL);
			return 0;
		}
		t = threads.lookup(&tid);
		if (!t)
			return 0;
		bpf_get_current_comm(&t->comm, sizeof(t->comm));
		struct kvmexit_key key = {.tgid = id >> 32, .tid = tid, .code = code, .detail = detail};
		new_keys.perf_submit(ctx, &key, sizeof(key));
	}
#ifdef KVMEXIT_ENTRY_CACHE
#ifdef KVMEXIT_RESIDENT
	if (!fresh)
		take_back(t, id);
#endif
	struct kvmexit_cpu *c = cpu_record(cpu);
	if (!fresh) {
		/* The pair the cache left open: the previous exit and its entry, if one came. */
		struct kvmexit_cpu *p = t->cpu == cpu ? c : cpu_record(t->cpu);
		u64 ts = t->ts;
		if (ts) {
			u64 e = seen_entry(t, p, id);
			t->ts = 0; /* before the row: user space never sees the pair both pending and in it */
			asm volatile("" ::: "memory");
			struct kvmexit_value *v = value_for(ctx, t, tid);
			if (v) {
				if (e)
					add_pair(v, e - ts, t->halt_ns);
				else
					v->unfinished++; /* the previous exit never saw its entry (missed event) */
			}
		}
		if (p != c)
			kill(p, id); /* the thread's record there is no longer its current one */
	}
	u32 row = row_of(code, detail);
#ifdef KVMEXIT_RESIDENT
	u64 *owner = cpu_owner.lookup(&cpu);
	struct kvmexit_cpu *r = resident_record(cpu);
	if (r && row < KVMEXIT_NR_ROWS && owns_rows(owner, id)) {
		kill(c, id); /* the thread's plain record here is no longer its current one */
		r->id = id;
		r->exit_ts = now;
		r->halt_ns = 0;
		r->row = row;
		r->code = code;
		r->detail = detail;
		r->gen = r->kills;
		asm volatile("" ::: "memory"); /* the record whole before its state */
		r->state = CPU_OPEN;
		t->ts = 0;
		t->tgid = id >> 32;
		t->cpu = cpu;
		t->gen = r->gen;
		asm volatile("" ::: "memory");
		t->resident = 1;
		return t;
	}
#endif
	if (c && c->state == CPU_CLOSED && c->id != id) {
		evict(c->id, c->exit_ts, c->entry_ts, cpu);
		c = cpu_record(cpu); /* again (inlined): the verifier forgets c across evict's lookup */
	}
	if (c) {
		c->id = id; /* first: see seen_entry */
		asm volatile("" ::: "memory");
		c->exit_ts = now;
		/* A reason without a row (the keyed map, which can be full) is paired at its entry. */
		c->state = row < KVMEXIT_NR_ROWS ? CPU_OPEN : 0;
		c->gen = c->kills;
	}
	t->cpu = c ? cpu : MAX_CPUS;
#else
	if (!fresh && t->ts) {
		/* The previous exit never saw its entry (missed event): keep it visible. */
		struct kvmexit_value *v = value_for(ctx, t, tid);
		if (v) {
			v->unfinished++;
#ifdef KVMEXIT_GUEST
			v->guest_ns += t->guest_ns;
#endif
		}
#ifdef KVMEXIT_SUB
		if (t->sub) {
			struct kvmexit_value *s = sub_value_for(t, tid);
			if (s) {
				s->unfinished++;
#ifdef KVMEXIT_GUEST
				s->guest_ns += t->guest_ns;
#endif
			}
		}
#endif
	}
#endif
#ifdef KVMEXIT_GUEST
	/* Guest residency: entry -> this exit, charged to this exit's row when it closes. With an exit
	 * still open (unfinished, above) the last entry came before it: no guest time. */
	t->guest_ns = !t->ts && t->entry_ts ? now - t->entry_ts : 0;
#endif
#ifdef KVMEXIT_SPLIT
	split_reset(&t->split);
#endif
	t->ts = now;
	t->halt_ns = 0;
	t->tgid = id >> 32;
	t->code = code;
	t->detail = detail;
#ifdef KVMEXIT_ENTRY_CACHE
	t->row = row;
#else
	t->row = row_of(code, detail);
#endif
#ifdef KVMEXIT_SUB
	t->sub = 0;
	t->sub_seen = 0;
#endif
	return t;
}

#ifdef SLOW_LOG
static __always_inline void log_slow(void *ctx, struct kvmexit_thread *t, u32 tid, u64 delta)
{
	struct kvmexit_slow e = {
		.ts = t->ts,
		.duration_ns = delta,
		.halt_ns = t->halt_ns,
		.pc = t->pc,
		.esr = t->esr,
		.sub = t->sub,
		.tgid = t->tgid,
		.tid = tid,
		.code = t->code,
		.detail = t->detail,
		.esr_known = t->esr_known,
#ifdef KVMEXIT_SPLIT
		.vmm_ns = t->split.vmm_ns, /* split_close has run: the pair's parts, within delta */
		.preempt_ns = t->split.preempt_ns,
		.blocked_ns = t->split.blocked_ns,
#endif
	};
	__builtin_memcpy(e.comm, t->comm, sizeof(e.comm));
	/* A full buffer drops the event; user space counts it (the perf buffer's lost callback). */
	slow_exits.perf_submit(ctx, &e, sizeof(e));
}
#endif

static __always_inline void on_entry(void *ctx)
{
	u64 now = bpf_ktime_get_ns();
	u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id))
		return;
	u32 tid = id;
#ifdef KVMEXIT_ENTRY_CACHE
	u32 cpu = bpf_get_smp_processor_id();
#ifdef KVMEXIT_RESIDENT
	struct kvmexit_cpu *r = resident_record(cpu);
	if (r && r->id == id && r->state == CPU_OPEN && r->gen == r->kills) {
		r->entry_ts = now; /* the owner of the CPU's rows: no hash lookup */
		asm volatile("" ::: "memory");
		r->state = CPU_CLOSED;
		return;
	}
#endif
	struct kvmexit_cpu *c = cpu_record(cpu);
	if (c && c->id == id && c->state == CPU_OPEN && c->gen == c->kills) {
		c->entry_ts = now; /* the common case: no hash lookup; the next exit folds the pair */
		asm volatile("" ::: "memory");
		c->state = CPU_CLOSED;
		return;
	}
#endif
	struct kvmexit_thread *t = threads.lookup(&tid);
#ifdef KVMEXIT_RESIDENT
	if (t)
		take_back(t, id);
#endif
	if (!t || !t->ts) {
		count(KVMEXIT_UNPAIRED_ENTRIES);
#ifdef KVMEXIT_GUEST
		if (t)
			t->entry_ts = now;
#endif
		return;
	}
#ifdef KVMEXIT_ENTRY_CACHE
	struct kvmexit_cpu *p = t->cpu == cpu ? c : cpu_record(t->cpu);
	if (seen_entry(t, p, id)) {
		count(KVMEXIT_UNPAIRED_ENTRIES); /* the open exit has its entry already */
		return;
	}
	kill(p, id); /* the record of the exit closing here (another CPU's, or killed) */
#endif
#ifdef KVMEXIT_GUEST
	t->entry_ts = now;
#endif
	u64 delta = now - t->ts;
#ifdef KVMEXIT_SPLIT
	split_close(t, now, delta); /* before the log, which sends the parts it leaves in the slot */
#endif
#ifdef SLOW_LOG
	if (delta > SLOW_NS)
		log_slow(ctx, t, tid, delta);
#endif
	struct kvmexit_value *v = value_for(ctx, t, tid);
	if (!v) {
		t->ts = 0;
		return;
	}
	add_parts(v, t);
	add_pair(v, delta, t->halt_ns);
#ifdef KVMEXIT_SUB
	if (t->sub) {
		struct kvmexit_value *s = sub_value_for(t, tid);
		if (s) {
			add_parts(s, t);
			add_pair(s, delta, t->halt_ns);
		}
	}
#endif
	t->ts = 0; /* after the row: see struct kvmexit_thread */
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
	u32 detail = arm64_detail(ret, ec);
	struct kvmexit_thread *t = on_exit(ctx, ret & ~(1U << ARM_EXIT_WITH_SERROR_BIT), detail);
#ifdef SLOW_LOG
	if (t) {
#ifdef EXIT_PC_ARG
		t->pc = ctx->args[EXIT_PC_ARG];
#endif
		t->esr = (u64)(detail & 0x3f) << 26; /* the EC; the ISS comes with kvmexit_esr_* */
		t->esr_known = 0;
	}
#endif
	return PASS_EVENT_ON;
}

#if EXIT_EC_ARG < 0
#ifdef KVMEXIT_RESIDENT
#error "kvm_trap_enter changes the open exit's reason in the slot: not with KVMEXIT_RESIDENT"
#endif
int kvmexit_trap(struct bpf_raw_tracepoint_args *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id;
	struct kvmexit_thread *t = threads.lookup(&tid);
	if (t && t->ts && t->code == ARM_EXCEPTION_TRAP) {
		t->detail = (t->detail & (1U << ARM_EXIT_WITH_SERROR_BIT)) |
			    ((u32)ctx->args[TRAP_EC_ARG] & 0x3f);
		t->row = row_of(t->code, t->detail);
#ifdef KVMEXIT_ENTRY_CACHE
		if (t->row >= KVMEXIT_NR_ROWS)
			kill(cpu_record(t->cpu), id); /* paired at its entry, in the keyed map */
#endif
#ifdef SLOW_LOG
		t->esr = (u64)(t->detail & 0x3f) << 26;
#endif
	}
	return PASS_EVENT_ON;
}
#endif

#ifdef SLOW_LOG
/* The whole ESR of the open exit, from the events that carry it (4.19 to 6.1 prototypes):
 * kvm_handle_sys_reg(hsr) for SYS64, kvm_guest_fault(vcpu_pc, hsr, hxfar, ipa) for aborts. */
static __always_inline int set_esr(u64 esr)
{
	u32 tid = bpf_get_current_pid_tgid();
	struct kvmexit_thread *t = threads.lookup(&tid);
	if (t && t->ts) {
		t->esr = esr;
		t->esr_known = 1;
	}
	return PASS_EVENT_ON;
}

int kvmexit_esr_sysreg(struct bpf_raw_tracepoint_args *ctx)
{
	return set_esr(ctx->args[0]);
}

int kvmexit_esr_fault(struct bpf_raw_tracepoint_args *ctx)
{
	return set_esr(ctx->args[1]);
}
#endif
#elif defined(SYNTHETIC_X86)
int kvmexit_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct kvmexit_thread *t = on_exit(ctx, ctx->args[0], ctx->args[1]);
#ifdef SLOW_LOG
	if (t) { /* args (exit_reason, isa, guest_rip, info1) */
		t->pc = ctx->args[2];
		t->esr = ctx->args[3];
		t->esr_known = 1;
	}
#endif
	return PASS_EVENT_ON;
}
#elif defined(LAYOUT_X86)
int kvmexit_exit(void *ctx)
{
	/* The record is built by the kernel: exit_reason and isa are read at their format offsets. */
	u32 reason = *(u32 *)((char *)ctx + X86_REASON_OFF);
	u32 isa = *(u32 *)((char *)ctx + X86_ISA_OFF);
	struct kvmexit_thread *t = on_exit(ctx, reason, isa);
#ifdef SLOW_LOG
	if (t) {
#ifdef X86_RIP_OFF
		t->pc = *(u64 *)((char *)ctx + X86_RIP_OFF);
#endif
#ifdef X86_INFO1_OFF
		t->esr = *(u64 *)((char *)ctx + X86_INFO1_OFF);
		t->esr_known = 1;
#endif
	}
#endif
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
#ifdef KVMEXIT_RESIDENT
	struct kvmexit_cpu *c = resident_record(bpf_get_smp_processor_id());
	if (c && live_resident(c, id)) { /* the open exit (or, closed, its entry came: not its halt) */
		if (c->state == CPU_OPEN)
			c->halt_ns += ns;
		return PASS_EVENT_ON;
	}
#endif
	u32 tid = id;
	struct kvmexit_thread *t = threads.lookup(&tid);
#ifdef KVMEXIT_RESIDENT
	if (t)
		take_back(t, id);
#endif
#ifdef KVMEXIT_ENTRY_CACHE
	if (t && t->ts && !seen_entry(t, cpu_record(t->cpu), id)) {
#else
	if (t && t->ts) {
#endif
		t->halt_ns += ns;
#ifdef KVMEXIT_SPLIT
		split_halt(&t->split, bpf_ktime_get_ns(), ns);
#endif
	}
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

#ifdef FILTER_LEARN
/*
 * Learning --vm: a VM started after kvmexit. Its first exit is traced (no verdict yet) and its
 * thread's new_keys event tells user space, which reads the name from /proc and writes the
 * verdict; exits made before a TGID_DENY are removed from the maps by user space and counted
 * (kvmexit.sources.vmfilter). sched_process_exit of the group leader drops the verdict, so a
 * reused pid is judged again, by its own name.
 */
int kvmexit_proc_exit(struct bpf_raw_tracepoint_args *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;
	if ((u32)id == tgid)
		tgid_filter.delete(&tgid);
	return PASS_EVENT_ON;
}
#endif

#ifdef KVMEXIT_SUB
/*
 * Sub-reasons (docs/subreasons.md): events that fire inside the open exit write slot->sub, the
 * same u64 as the offline rule (sources/trace/subdecode.exit_sub_*); its constants and the
 * SUB_IS_*(code, detail) tests come from reasons/subreasons.py as defines. The first event of a
 * kind decides; an event outside an open exit, or of another class's kind, changes nothing.
 */
#define SUB_SEEN_FAULT 1 /* kvm_guest_fault (arm64) / kvm_page_fault (x86) */
#define SUB_SEEN_MMIO 2  /* kvm_mmio / kvm_fast_mmio: sub_addr holds the first address */
#define SUB_SEEN_USER 4  /* kvm_userspace_exit with KVM_EXIT_MMIO */

static __always_inline struct kvmexit_thread *open_exit(void)
{
	u32 tid = bpf_get_current_pid_tgid();
	struct kvmexit_thread *t = threads.lookup(&tid);
	return t && t->ts ? t : 0;
}

/* The abort / fault kinds of reasons/subreasons.abort_sub from what was seen so far. */
static __always_inline void set_abort_sub(struct kvmexit_thread *t, u32 seen)
{
	t->sub_seen = seen;
	u64 kind;
#if defined(LAYOUT_ARM64)
	/* exit_sub_arm64: no kvm_guest_fault, no sub-reason; with it, MMIO or a memory fault */
	if (!(seen & SUB_SEEN_FAULT))
		kind = 0;
	else if (!(seen & SUB_SEEN_MMIO))
		kind = SUB_ABORT_MEMORY;
#else
	/* exit_sub_x86: MMIO if any, else a memory fault if kvm_page_fault was seen */
	if (!(seen & SUB_SEEN_MMIO))
		kind = seen & SUB_SEEN_FAULT ? SUB_ABORT_MEMORY : 0;
#endif
	else
		kind = seen & SUB_SEEN_USER ? SUB_ABORT_USER_MMIO : SUB_ABORT_KERNEL_MMIO;
	u64 addr = kind == SUB_ABORT_KERNEL_MMIO || kind == SUB_ABORT_USER_MMIO ? t->sub_addr & SUB_ADDR_MASK : 0;
	t->sub = kind << SUB_KIND_SHIFT | addr;
}

/* kvm_guest_fault (arm64) / kvm_page_fault (x86) */
static __always_inline int sub_fault_seen(void)
{
	struct kvmexit_thread *t = open_exit();
#if defined(LAYOUT_ARM64)
	if (t && SUB_IS_ABORT(t->code, t->detail))
#else
	if (t && SUB_IS_FAULT(t->code, t->detail))
#endif
		set_abort_sub(t, t->sub_seen | SUB_SEEN_FAULT);
	return PASS_EVENT_ON;
}

/* kvm_mmio(type, len, gpa, val) and kvm_fast_mmio(gpa) */
static __always_inline int sub_mmio_seen(u64 gpa)
{
	struct kvmexit_thread *t = open_exit();
#if defined(LAYOUT_ARM64)
	if (!t || !SUB_IS_ABORT(t->code, t->detail))
#else
	if (!t || !SUB_IS_FAULT(t->code, t->detail))
#endif
		return PASS_EVENT_ON;
	if (!(t->sub_seen & SUB_SEEN_MMIO))
		t->sub_addr = gpa;
	set_abort_sub(t, t->sub_seen | SUB_SEEN_MMIO);
	return PASS_EVENT_ON;
}

int kvmexit_sub_mmio(struct bpf_raw_tracepoint_args *ctx)
{
	return sub_mmio_seen(ctx->args[2]);
}

/* kvm_userspace_exit(reason, errno): with errno < 0 the kernel prints the errno, not the reason
 * (which may be stale), and the offline rule does not read it either. */
int kvmexit_sub_user(struct bpf_raw_tracepoint_args *ctx)
{
	struct kvmexit_thread *t = open_exit();
#if defined(LAYOUT_ARM64)
	if (!t || !SUB_IS_ABORT(t->code, t->detail))
#else
	if (!t || !SUB_IS_FAULT(t->code, t->detail))
#endif
		return PASS_EVENT_ON;
	if ((u32)ctx->args[0] == SUB_KVM_EXIT_MMIO && (s32)ctx->args[1] >= 0)
		set_abort_sub(t, t->sub_seen | SUB_SEEN_USER);
	return PASS_EVENT_ON;
}

#if defined(LAYOUT_ARM64)
/* kvm_wfx_arm64(vcpu_pc, is_wfe) */
int kvmexit_sub_wfx(struct bpf_raw_tracepoint_args *ctx)
{
	struct kvmexit_thread *t = open_exit();
	if (t && !t->sub && SUB_IS_WFX(t->code, t->detail))
		t->sub = ctx->args[1] ? SUB_WFE : SUB_WFI;
	return PASS_EVENT_ON;
}

/* kvm_hvc_arm64(vcpu_pc, r0, imm): the function id; KVM compares all 64 bits of x0 */
int kvmexit_sub_hvc(struct bpf_raw_tracepoint_args *ctx)
{
	struct kvmexit_thread *t = open_exit();
	u64 r0 = ctx->args[1];
	if (t && !t->sub && SUB_IS_HVC(t->code, t->detail))
		t->sub = SUB_HVC_SEEN | (r0 >> 32 ? SUB_HVC_HIGH : 0) | (r0 & 0xffffffff);
	return PASS_EVENT_ON;
}

/* kvm_handle_sys_reg(hsr): the register and direction from the ESR's ISS */
int kvmexit_sub_sysreg(struct bpf_raw_tracepoint_args *ctx)
{
	struct kvmexit_thread *t = open_exit();
	if (t && !t->sub && SUB_IS_SYS64(t->code, t->detail))
		t->sub = SUB_SYS64_SEEN | (ctx->args[0] & SUB_SYS64_MASK);
	return PASS_EVENT_ON;
}

/* kvm_guest_fault(vcpu_pc, hsr, hxfar, ipa) */
int kvmexit_sub_fault(struct bpf_raw_tracepoint_args *ctx)
{
	return sub_fault_seen();
}
#else
/* x86: the first event of the exit's own kind decides (exit_sub_x86). */
/* kvm_msr(write, ecx, data, exception) */
int kvmexit_sub_msr(struct bpf_raw_tracepoint_args *ctx)
{
	struct kvmexit_thread *t = open_exit();
	if (t && !t->sub && SUB_IS_MSR(t->code, t->detail))
		t->sub = SUB_X86_SEEN | (ctx->args[0] ? 1ULL << 32 : 0) | (ctx->args[1] & 0xffffffff);
	return PASS_EVENT_ON;
}

/* kvm_pio(rw, port, size, count, data) */
int kvmexit_sub_pio(struct bpf_raw_tracepoint_args *ctx)
{
	struct kvmexit_thread *t = open_exit();
	if (t && !t->sub && SUB_IS_IO(t->code, t->detail))
		t->sub = SUB_X86_SEEN | (ctx->args[0] ? 1ULL << 16 : 0) | (ctx->args[1] & 0xffff);
	return PASS_EVENT_ON;
}

/* kvm_cr(rw, cr, val) */
int kvmexit_sub_cr(struct bpf_raw_tracepoint_args *ctx)
{
	struct kvmexit_thread *t = open_exit();
	if (t && !t->sub && SUB_IS_CR(t->code, t->detail))
		t->sub = SUB_X86_SEEN | (ctx->args[0] ? 1ULL << 8 : 0) | (ctx->args[1] & 0xff);
	return PASS_EVENT_ON;
}

/* kvm_hypercall(nr, a0, a1, a2, a3) */
int kvmexit_sub_hypercall(struct bpf_raw_tracepoint_args *ctx)
{
	struct kvmexit_thread *t = open_exit();
	if (t && !t->sub && SUB_IS_HYPERCALL(t->code, t->detail))
		t->sub = SUB_X86_SEEN | (ctx->args[0] & (SUB_X86_SEEN - 1));
	return PASS_EVENT_ON;
}

/* kvm_cpuid(function, ...): the leaf is the first argument on 4.19 and 6.1 alike */
int kvmexit_sub_cpuid(struct bpf_raw_tracepoint_args *ctx)
{
	struct kvmexit_thread *t = open_exit();
	if (t && !t->sub && SUB_IS_CPUID(t->code, t->detail))
		t->sub = SUB_X86_SEEN | (ctx->args[0] & 0xffffffff);
	return PASS_EVENT_ON;
}

/* kvm_fast_mmio(gpa) */
int kvmexit_sub_fast_mmio(struct bpf_raw_tracepoint_args *ctx)
{
	return sub_mmio_seen(ctx->args[0]);
}

/* kvm_page_fault: only that it fired (its arguments differ between 4.19 and 6.1) */
int kvmexit_sub_page_fault(struct bpf_raw_tracepoint_args *ctx)
{
	return sub_fault_seen();
}
#endif
#endif

#ifdef KVMEXIT_TEST_HOOKS
/* Tests only (BPF_PROG_TEST_RUN): the helpers above on given values, against their Python twins. */
BPF_ARRAY(test_out, struct kvmexit_value, 1);

int kvmexit_test_hist(struct bpf_raw_tracepoint_args *ctx)
{
	return hist_slot(ctx->args[0]);
}

int kvmexit_test_square(struct bpf_raw_tracepoint_args *ctx)
{
	u32 zero = 0;
	struct kvmexit_value *v = test_out.lookup(&zero);
	if (v)
		add_square(v->sumsq, ctx->args[0]);
	return 0;
}
#endif
