/* Structures shared by kvmexit.bpf.c and the Python side (which gets them through bcc). */
#ifndef KVMEXIT_H
#define KVMEXIT_H

#define KVMEXIT_HIST_SLOTS 40 /* log2(ns) buckets: slot 39 holds everything >= 2^39 ns (~9 min) */

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
	u64 pairs;      /* exits whose entry was seen */
	u64 unfinished; /* exits followed by another exit before any entry */
	u64 total_ns;
	u64 min_ns;
	u64 max_ns;
	u64 halt_ns;
	u64 hist[KVMEXIT_HIST_SLOTS];
	char comm[16];
};

#endif
