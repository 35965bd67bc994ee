/* Structures shared by kvmexit.bpf.c and the Python side (which gets them through bcc). */
#ifndef KVMEXIT_H
#define KVMEXIT_H

/* KVMEXIT_HIST_SLOTS (log2(ns) buckets: the last holds everything longer) and
 * KVMEXIT_VALUE_FIELDS (the u64 fields of struct kvmexit_value) are compile-time defines,
 * generated from kvmexit.model.STAT_FIELDS, the one definition of the statistics record. */

/* Indexes into the per-CPU "counters" array. */
#define KVMEXIT_UNPAIRED_ENTRIES 0 /* kvm_entry with no kvm_exit seen before it on that thread */
#define KVMEXIT_START_MAP_FULL 1   /* exit not timed: per-thread start map full */
#define KVMEXIT_STATS_MAP_FULL 2   /* pair or unfinished exit not recorded: stats map full */
#define KVMEXIT_NR_COUNTERS 3

/* Per thread: the exit waiting for its entry, if ts != 0. */
struct kvmexit_start {
	u64 ts;
	u64 halt_ns; /* time in kvm_vcpu_halt/block reported by kvm_vcpu_wakeup since the exit */
	u32 tgid;
	u32 code;
	u32 detail;
	u32 pad;
};

struct kvmexit_key {
	u32 tgid;
	u32 tid;
	u32 code;   /* arm64: exception type; x86: exit_reason */
	u32 detail; /* arm64: EC for traps | SError flag; x86: isa */
};

struct kvmexit_value {
	KVMEXIT_VALUE_FIELDS /* u64 pairs; u64 unfinished; ...; u64 hist[KVMEXIT_HIST_SLOTS]; */
	char comm[16];
};

#endif
