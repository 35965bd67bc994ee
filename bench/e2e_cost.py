#!/usr/bin/env python3
"""End-to-end cost per event, tracepoint dispatch included, on a real tracepoint.

kvm_exit and kvm_entry never fire on this machine, so the programs are attached to the syscall
tracepoints, which a workload can fire in a tight loop: a syscall's return (raw_syscalls:sys_exit)
plays kvm_exit and the next syscall's start (raw_syscalls:sys_enter) plays kvm_entry, so each
loop iteration is one exit->entry pair on the same thread. The workload (a small C program) calls
dup2(2, 2), which returns 2: ARM_EXCEPTION_TRAP for the programs reading it as kvm_exit's ret.

Variants, run interleaved (rounds of each), each timing N calls:

- nothing attached;
- slow path: a program on another syscall's classic tracepoints (getppid, never called here). Any
  syscall tracepoint in use sends every syscall through the kernel's syscall-tracing slow path, a
  cost kvm tracepoints do not have; this variant measures it, and the added costs below are
  over it (so they hold the tracepoint dispatch and the program, as on kvm_exit/kvm_entry);
- original: bench/original_kvmexit_aarch64.bpf.c on classic tracepoints reading the record, the
  original tool's attach type (esr_ec read from sys_exit's ret field: class 2);
- kvmexit: kvmexit's arm64 programs on raw tracepoints, its attach type (ret from the syscall's
  return value; the class from the first argument, the pt_regs pointer: the reason is printed and
  must be one with a row in the threads' slots, the default path).

Both fire for every syscall on the machine while attached (other processes pay too, briefly).
The workload measures its own thread's CPU time (CLOCK_THREAD_CPUTIME_ID, which counts the
programs run in its syscalls but not the time other processes take the CPU, so a loaded machine
adds less noise). Prints CPU ns per loop iteration (one pair), the cost each variant adds over
the slow path and the ratio.

Usage: bench/e2e_cost.py [--calls N] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src")]

from kvmexit.layouts import Layout  # noqa: E402
from kvmexit.reasons import ARCH_ARM64, ROW_REASONS, label  # noqa: E402
from kvmexit.sources.live import LiveSource, import_bcc  # noqa: E402

WORKLOAD = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	long n = atol(argv[1]);
	struct timespec a, b;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
	for (long i = 0; i < n; i++)
		if (dup2(2, 2) != 2)
			return 1;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
	printf("%.3f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
	return 0;
}
"""

# kvm_exit(ret, esr_ec) read from sys_exit(regs, ret): ret is argument 1, the class argument 0.
SYSCALL_AS_KVM = Layout(
    "arm64", ARCH_ARM64, "ret", "esr_ec", defines=("LAYOUT_ARM64", "EXIT_RET_ARG=1", "EXIT_EC_ARG=0")
)


def build_workload(tmp: Path) -> Path:
    src, exe = tmp / "loop.c", tmp / "loop"
    src.write_text(WORKLOAD)
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def run(exe: Path, calls: int, pids: list | None = None) -> float:
    """CPU ns per call of a fresh workload process (its pid appended to ``pids``)."""
    p = subprocess.Popen([str(exe), str(calls)], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate()
    if p.returncode:
        raise subprocess.CalledProcessError(p.returncode, exe)
    if pids is not None:
        pids.append(p.pid)
    return float(out)


def owned_rounds(ours: LiveSource, pids: list) -> int:
    """Rounds whose workload owned a CPU's rows (kvmexit's resident path; the first thread to make
    a syscall on a CPU owns it until a snapshot sees it ended, so most rounds' fresh process does
    not, and pairs through the entry cache instead)."""
    owners = {v.value for v in ours.bpf["cpu_owner"].values()} if ours.resident else set()
    return sum(1 for pid in pids if (pid << 32 | pid) in owners)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=500_000)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    bcc = import_bcc()
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_workload(Path(tmp))
        original = bcc.BPF(text=(HERE / "original_kvmexit_aarch64.bpf.c").read_text(), cflags=["-DORIG_EC_OFF=16"])
        idle = bcc.BPF(text="int idle(void *ctx) { return 0; }")
        ours = LiveSource(SYSCALL_AS_KVM, attach=False).open()
        try:
            pids: list = []
            times = measure(exe, idle, original, ours, args.calls, args.rounds, pids)
            owned = owned_rounds(ours, pids)
            keys = [(k, s) for k, s in ours.snapshot().stats.items() if k.tgid != 0 and s.pairs >= args.calls]
        finally:
            ours.close()
            original.cleanup()
            idle.cleanup()
    (key, _), *_ = sorted(keys, key=lambda ks: -ks[1].pairs)
    row = (key.code, key.detail) in ROW_REASONS[ARCH_ARM64]
    if not row:
        raise SystemExit(
            "kvmexit saw the workload as %s, which has no row: not the default path"
            % label("arm64", key.code, key.detail)
        )
    base = statistics.median(times["slow path"])
    print(
        "End-to-end cost per exit->entry pair (raw_syscalls sys_exit -> next sys_enter, %d calls x %d rounds, median):"
        % (args.calls, args.rounds)
    )
    added = {}
    for v, ts in times.items():
        med = statistics.median(ts)
        added[v] = med - base
        print(
            "  %-9s %7.1f ns per pair  (over slow path %6.1f ns; spread %.1f-%.1f)"
            % (v, med, added[v], min(ts), max(ts))
        )
    print(
        "  kvmexit's reason for the workload: %s (a row in the thread's slot: the default path)"
        % label("arm64", key.code, key.detail)
    )
    print(
        "  kvmexit rounds whose workload owned its CPU's rows (no hash lookup per pair): %d of %d;"
        " the others paired through the entry cache (one lookup per pair)" % (owned, args.rounds)
    )
    print("  ratio of added cost kvmexit/original: %.2fx  (goal <= 0.8x)" % (added["kvmexit"] / added["original"]))
    return 0


def measure(exe: Path, idle, original, ours: LiveSource, calls: int, rounds: int, pids: list) -> dict:
    times: dict = {"nothing": [], "slow path": [], "original": [], "kvmexit": []}
    for _ in range(rounds):
        times["nothing"].append(run(exe, calls))
        idle.attach_tracepoint(tp="syscalls:sys_exit_getppid", fn_name="idle")
        idle.attach_tracepoint(tp="syscalls:sys_enter_getppid", fn_name="idle")
        try:
            times["slow path"].append(run(exe, calls))
        finally:
            idle.detach_tracepoint("syscalls:sys_exit_getppid")
            idle.detach_tracepoint("syscalls:sys_enter_getppid")
        original.attach_tracepoint(tp="raw_syscalls:sys_exit", fn_name="orig_exit")
        original.attach_tracepoint(tp="raw_syscalls:sys_enter", fn_name="orig_entry")
        try:
            times["original"].append(run(exe, calls))
        finally:
            original.detach_tracepoint("raw_syscalls:sys_exit")
            original.detach_tracepoint("raw_syscalls:sys_enter")
        ours.bpf.attach_raw_tracepoint(tp="sys_exit", fn_name="kvmexit_exit")
        ours.bpf.attach_raw_tracepoint(tp="sys_enter", fn_name="kvmexit_entry")
        try:
            times["kvmexit"].append(run(exe, calls, pids))
        finally:
            ours.bpf.detach_raw_tracepoint("sys_exit")
            ours.bpf.detach_raw_tracepoint("sys_enter")
    return times


if __name__ == "__main__":
    sys.exit(main())
