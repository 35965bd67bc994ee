#!/usr/bin/env python3
"""BPF cost per kvm_exit -> kvm_entry pair, and the cost of reading and reporting big maps.

Needs root, bcc and kernel headers (scripts/setup.sh). Programs run through BPF_PROG_TEST_RUN
(no real exits fire on this machine); BPF_ENABLE_STATS measures their run time only,
not the syscall. The variants run interleaved in one process so they share the machine's noise:

- kvmexit: the project's arm64 programs (raw tracepoints), as the default run compiles them
  (with the entry cache and resident threads: the benchmark's thread is the first to exit on its
  CPU, so it owns the CPU's rows, as a vCPU pinned to its CPU or alone there does; its exits and
  entries make no hash lookup);
- kvmexit-nonowner: the same, for a thread on a CPU whose rows another thread owns (more vCPU
  threads than CPUs): the entry cache alone, one hash lookup per pair;
- kvmexit-guest: the same with guest residency (--guest, KVMEXIT_GUEST), to show what it costs
  (the opt-in paths pair in the thread's slot at kvm_entry, without the entry cache);
- kvmexit-split: the same with --split compiled in (KVMEXIT_SPLIT and KVMEXIT_GUEST): the
  exit/entry part of its cost (its sched_switch program's cost per context switch is printed
  after, see switch_cost);
- original: the original kvmexit-aarch64.py's BPF logic transcribed with its structure (one
  hash lookup and one timestamp per event; bench/original_kvmexit_aarch64.bpf.c), compiled for
  raw tracepoints, kvmexit's attach type (the original's classic tracepoints cost more per event:
  that is in bench/e2e_cost.py, not here);
- naive-pairing: a naive per-thread pairing (start and class maps updated at exit, stats
  looked up or inserted; two lookups, a stats lookup and two deletes at entry), not the original;
- floor: a timestamp and one per-thread map operation per event (update at exit, lookup at entry);
- empty: programs that do nothing: what BPF_PROG_TEST_RUN's dispatch and the run-time stats cost
  by themselves per pair, the same in every variant;
- clock: the thread's id and a timestamp per event and nothing else: what any pairing must do;
- floor-slot: the same with kvmexit's trick, a lookup and an in-place write at exit instead of an
  update: the least a pairing with a hash lookup per event can do (kvmexit makes none per pair
  for a resident thread, one for the others);
- kvmexit-sub: kvmexit built with sub-reasons (--sub, KVMEXIT_SUB): each pair also runs one
  sub-reason program (kvm_hvc_arm64, kvm_handle_sys_reg or kvm_wfx_arm64 by class) and, at entry,
  records the pair again under its sub-reason: the opt-in path's whole cost per pair;
- kvmexit@REV (``--baseline REV``): the default program of git revision REV (its kvmexit.bpf.c and
  kvmexit.h, with today's defines), to show the default path did not grow.

Usage: bench/bpf_cost.py [--pairs N] [--threads N] [--reasons N] [--baseline REV]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent / "tests")]

from bpf_testrun import bpf_syscall, test_run_raw  # noqa: E402
from kvmexit.layouts import Layout  # noqa: E402
from kvmexit.model import build_report, paused_gc  # noqa: E402
from kvmexit.reasons import ARCH_ARM64, label  # noqa: E402
from kvmexit.sources.live import LiveSource, import_bcc  # noqa: E402
from kvmexit.views import format_table  # noqa: E402

ARM64 = Layout("arm64", ARCH_ARM64, "ret", "esr_ec", defines=("LAYOUT_ARM64", "EXIT_RET_ARG=0", "EXIT_EC_ARG=1"))
TRAP = 2
ECS = (0x01, 0x16, 0x18, 0x24, 0x20, 0x07, 0x19, 0x15, 0x17, 0x00)


def run_time_stats() -> int:
    """Programs' run time is counted while the returned descriptor is open (BPF_ENABLE_STATS,
    5.8+): unlike the kernel.bpf_stats_enabled sysctl, another process turning it off meanwhile
    (another benchmark) cannot stop it."""
    attr = ctypes.c_uint32(0)  # BPF_STATS_RUN_TIME
    fd = bpf_syscall(32, ctypes.byref(attr), ctypes.sizeof(attr))  # BPF_ENABLE_STATS
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS: %s" % os.strerror(ctypes.get_errno()))
    return fd


#: A sub-reason event per class, for kvmexit-sub: (program, raw tracepoint arguments).
SUB_EVENT = {
    0x01: ("kvmexit_sub_wfx", (0x1000, 0)),
    0x16: ("kvmexit_sub_hvc", (0x1000, 0x84000000, 0)),
    0x18: ("kvmexit_sub_sysreg", ((0x18 << 26) | (3 << 20) | (5 << 17) | (12 << 10) | (11 << 1),)),
}


def baseline_text(rev: str) -> str:
    """kvmexit.bpf.c of git revision ``rev`` with its kvmexit.h inlined (as render_program does)."""

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "-C", str(HERE.parent), "show", "%s:src/kvmexit/bpf/%s" % (rev, path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    return show("kvmexit.bpf.c").replace('#include "kvmexit.h"', show("kvmexit.h"))


def xlated_insns(bpf, fn: str) -> int:
    """Instructions of a loaded program after the verifier (bpftool's bytes_xlated / 8)."""
    fd = bpf.load_func(fn, bpf.RAW_TRACEPOINT).fd
    out = subprocess.run(
        ["bpftool", "prog", "show", "id", str(_prog_id(fd)), "--json"], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)["bytes_xlated"] // 8


def _prog_id(fd: int) -> int:
    with open("/proc/self/fdinfo/%d" % fd) as f:
        for line in f:
            if line.startswith("prog_id:"):
                return int(line.split()[1])
    raise RuntimeError("no prog_id for fd %d" % fd)


def _copy_rows(src: LiveSource, dst) -> None:
    """The baseline build gets the same reason_rows as kvmexit's (LiveSource fills its own)."""
    table = dst["reason_rows"]
    for k, v in src.bpf["reason_rows"].items():
        table[table.Key(k.value)] = table.Leaf(v.value)


def _stats_of(variant: str, programs: dict) -> list:
    bpf, ex, en = programs[variant]
    return [_fd_stats(bpf.load_func(fn, bpf.RAW_TRACEPOINT).fd) for fn in (ex, en)]


def _fd_stats(fd: int) -> tuple:
    out = subprocess.run(["bpftool", "prog", "show", "id", str(_prog_id(fd)), "--json"], capture_output=True, text=True)
    info = json.loads(out.stdout)
    return info.get("run_time_ns", 0), info.get("run_cnt", 0)


def cost_per_pair(pairs: int, reasons: int, baseline: str = "") -> None:
    bcc = import_bcc()
    ours = LiveSource(ARM64, attach=False).open()
    nonowner = LiveSource(ARM64, attach=False).open()
    owned_elsewhere(nonowner)
    sub = LiveSource(ARM64, attach=False, subreasons=True).open()
    before_build = None
    if baseline:
        before_build = bcc.BPF(text=baseline_text(baseline), cflags=list(ours.program.cflags))
    guest = LiveSource(ARM64, attach=False, guest=True).open()
    split = LiveSource(ARM64, attach=False, split=True, guest=True).open()
    original = bcc.BPF(text=(HERE / "original_kvmexit_aarch64.bpf.c").read_text(), cflags=["-DORIG_RAW_TRACEPOINT"])
    naive = bcc.BPF(text=(HERE / "naive_pairing.bpf.c").read_text())
    floor = bcc.BPF(text=(HERE / "floor.bpf.c").read_text())
    raw = bcc.BPF.RAW_TRACEPOINT
    programs = {
        "kvmexit": (ours.bpf, "kvmexit_exit", "kvmexit_entry"),
        "kvmexit-nonowner": (nonowner.bpf, "kvmexit_exit", "kvmexit_entry"),
        "kvmexit-guest": (guest.bpf, "kvmexit_exit", "kvmexit_entry"),
        "kvmexit-split": (split.bpf, "kvmexit_exit", "kvmexit_entry"),
        "original": (original, "orig_exit", "orig_entry"),
        "naive-pairing": (naive, "naive_exit", "naive_entry"),
        "floor": (floor, "floor_exit", "floor_entry"),
        "floor-slot": (floor, "floor2_exit", "floor2_entry"),
        "empty": (floor, "empty_exit", "empty_entry"),
        "clock": (floor, "clock_exit", "clock_entry"),
        "kvmexit-sub": (sub.bpf, "kvmexit_exit", "kvmexit_entry"),
    }
    if before_build is not None:
        programs["kvmexit@" + baseline] = (before_build, "kvmexit_exit", "kvmexit_entry")
        _copy_rows(ours, before_build)
    variants = {v: (b.load_func(ex, raw).fd, b.load_func(en, raw).fd) for v, (b, ex, en) in programs.items()}
    sub_fds = {ec: (sub.bpf.load_func(fn, raw).fd, args) for ec, (fn, args) in SUB_EVENT.items()}
    sub_only = [fd for fd, _ in sub_fds.values()]
    stats = run_time_stats()
    try:
        before = {v: _stats_of(v, programs) for v in variants}
        sub_before = [_fd_stats(fd) for fd in sub_only]
        batch = 200
        order = list(variants.items())
        for start in range(0, pairs, batch):
            order = order[1:] + order[:1]  # rotate: no variant always runs first or after another
            for v, (ex, en) in order:
                with_sub = v == "kvmexit-sub"
                for i in range(start, start + batch):
                    ec = ECS[i % reasons]
                    ret = TRAP if ec else 0  # EC 0 stands for IRQ exits
                    test_run_raw(ex, ret, ec, 0x1000)
                    if with_sub and ec in sub_fds:
                        fd, args = sub_fds[ec]
                        test_run_raw(fd, *args)
                    test_run_raw(en, 0x1000)
        after = {v: _stats_of(v, programs) for v in variants}
        sub_after = [_fd_stats(fd) for fd in sub_only]
    finally:
        os.close(stats)
    per_pair = {}
    for v in variants:
        ns = sum(a[0] - b[0] for a, b in zip(after[v], before[v]))
        runs = sum(a[1] - b[1] for a, b in zip(after[v], before[v]))
        assert runs == 2 * pairs, (v, runs)
        per_pair[v] = ns / pairs
    sub_ns = sum(a[0] - b[0] for a, b in zip(sub_after, sub_before))
    sub_runs = sum(a[1] - b[1] for a, b in zip(sub_after, sub_before))
    with_event = sum(1 for i in range(pairs) if ECS[i % reasons] in sub_fds)
    assert sub_runs == with_event, (sub_runs, with_event)
    per_pair["kvmexit-sub"] += sub_ns / pairs  # the sub-reason programs' share, per pair
    print("BPF cost per exit->entry pair (%d pairs, %d reasons, bpf_stats run time):" % (pairs, reasons))
    for v, ns in per_pair.items():
        print("  %-20s %7.1f ns" % (v, ns))
    print("  ratio kvmexit-nonowner/original: %.2fx" % (per_pair["kvmexit-nonowner"] / per_pair["original"]))
    print(
        "  --guest: kvmexit-guest - kvmexit = %+.1f ns per pair (%+.1f%%)"
        % (
            per_pair["kvmexit-guest"] - per_pair["kvmexit"],
            100 * (per_pair["kvmexit-guest"] / per_pair["kvmexit"] - 1),
        )
    )
    print(
        "  --split at exit/entry: kvmexit-split - kvmexit-guest = %+.1f ns per pair"
        % (per_pair["kvmexit-split"] - per_pair["kvmexit-guest"])
    )
    print("  ratio kvmexit/original: %.2fx  (goal <= 1.0x)" % (per_pair["kvmexit"] / per_pair["original"]))
    print("  ratio kvmexit/floor:    %.2fx  (goal <= 1.5x)" % (per_pair["kvmexit"] / per_pair["floor"]))
    for base in ("empty", "clock"):
        print(
            "  ratio kvmexit/original beyond %-5s %.2fx  (kvmexit %.1f ns, original %.1f ns more than %s)"
            % (
                base + ":",
                (per_pair["kvmexit"] - per_pair[base]) / (per_pair["original"] - per_pair[base]),
                per_pair["kvmexit"] - per_pair[base],
                per_pair["original"] - per_pair[base],
                base,
            )
        )
    print(
        "  ratio kvmexit/floor-slot: %.2fx  (two hash lookups per pair and nothing else;"
        " a resident kvmexit thread makes none)" % (per_pair["kvmexit"] / per_pair["floor-slot"])
    )
    print(
        "  ratio kvmexit-sub/kvmexit: %.2fx  (sub-reasons, opt-in: %d of %d pairs had a sub-reason event)"
        % (per_pair["kvmexit-sub"] / per_pair["kvmexit"], with_event, pairs)
    )
    insns = {
        "kvmexit": (xlated_insns(ours.bpf, "kvmexit_exit"), xlated_insns(ours.bpf, "kvmexit_entry")),
        "kvmexit-sub": (xlated_insns(sub.bpf, "kvmexit_exit"), xlated_insns(sub.bpf, "kvmexit_entry")),
    }
    if before_build is not None:
        v = "kvmexit@" + baseline
        print("  ratio kvmexit/%s: %.2fx  (the default path before and now)" % (v, per_pair["kvmexit"] / per_pair[v]))
        insns[v] = (xlated_insns(before_build, "kvmexit_exit"), xlated_insns(before_build, "kvmexit_entry"))
    for v, (ex, en) in insns.items():
        print("  %-16s instructions after the verifier: kvm_exit %d, kvm_entry %d" % (v, ex, en))
    for source in (ours, nonowner):
        snap = source.snapshot()
        assert sum(s.pairs for s in snap.stats.values()) == pairs  # the programs really paired
    subs = sub.snapshot().subs
    assert sum(s.pairs for s in subs.values()) == with_event  # and recorded under their sub-reason
    slot = ctypes.sizeof(ours.bpf["threads"].Leaf)
    row = ctypes.sizeof(ours.bpf["stats"].Leaf)
    print(
        "  kvmexit map memory: %d bytes per traced thread (slot with %d rows of %d bytes, allocated on a"
        " thread's first exit), %d bytes per keyed (tid, reason) entry (preallocated: x MAX_KEYS)"
        % (slot, len(ours.rows), row, row + 16)
    )
    cache = ours.bpf["exit_cache"]
    print(
        "  kvmexit exit_cache: %d bytes per possible CPU (%d here; a plain and a resident record of %d bytes)"
        % (2 * ctypes.sizeof(cache.Leaf), len(cache) // 2, ctypes.sizeof(cache.Leaf))
    )
    print(
        "  kvmexit cpu_owner and cpu_rows: %d bytes per possible CPU (%d rows of %d bytes)"
        % (8 + row * len(ours.rows), len(ours.rows), row)
    )
    print("  original map memory: %d bytes per thread" % ctypes.sizeof(original["orig_threads"].Leaf))
    switch_cost(split, pairs)
    ours.close()
    nonowner.close()
    sub.close()
    if before_build is not None:
        before_build.cleanup()
    guest.close()
    split.close()
    original.cleanup()
    naive.cleanup()
    floor.cleanup()


def owned_elsewhere(source: LiveSource) -> None:
    """Every CPU's rows owned by another thread (an id no benchmark thread has)."""
    owners = source.bpf["cpu_owner"]
    for cpu in range(len(owners)):
        owners[owners.Key(cpu)] = owners.Leaf((1 << 32) | 1)


def switch_cost(split: LiveSource, switches: int) -> None:
    """What --split's sched_switch program costs per context switch of the host: most switches are
    of tasks that are not vCPU threads inside an exit (two map lookups that miss); a vCPU thread
    switched out inside an exit and back in costs an update, a lookup hit and a delete besides."""
    raw = import_bcc().BPF.RAW_TRACEPOINT
    fd_switch = split.bpf.load_func("kvmexit_switch", raw).fd
    fd_exit = split.bpf.load_func("kvmexit_exit", raw).fd
    fd_entry = split.bpf.load_func("kvmexit_entry", raw).fd
    stats = run_time_stats()
    try:
        _switch_cost(split, switches, fd_switch, fd_exit, fd_entry)
    finally:
        os.close(stats)


def _switch_cost(split: LiveSource, switches: int, fd_switch: int, fd_exit: int, fd_entry: int) -> None:
    before = _fd_stats(fd_switch)
    for i in range(switches):  # other tasks: not in the threads map, not switched out in an exit
        test_run_raw(fd_switch, i & 1, 0x10000 + (i & 1023), 0x20000 + (i & 1023), 1)
    mid = _fd_stats(fd_switch)
    n = max(1, switches // 4)
    # The switch back in runs on another thread (the CPU's previous task), as in the kernel.
    todo: queue.Queue[int] = queue.Queue()
    done: queue.Queue[int] = queue.Queue()

    def previous_task() -> None:
        while todo.get():
            test_run_raw(fd_switch, 0, 0x10000, 0xABC, 1)
            done.put(1)

    worker = threading.Thread(target=previous_task)
    worker.start()
    for _ in range(n):  # this thread, inside an exit: switched out (prev), then back in (next)
        test_run_raw(fd_exit, TRAP, 0x24, 0x1000)
        test_run_raw(fd_switch, 1, 0xABC, 0x20000, 0)
        todo.put(1)
        done.get()
        test_run_raw(fd_entry, 0x1000)
    todo.put(0)
    worker.join()
    after = _fd_stats(fd_switch)
    assert mid[1] - before[1] == switches and after[1] - mid[1] == 2 * n
    print("--split: sched_switch program, bpf_stats run time per context switch of the host:")
    print("  other tasks (the common case)   %7.1f ns" % ((mid[0] - before[0]) / switches))
    print(
        "  a vCPU thread inside an exit     %7.1f ns  (per switch, out and in averaged)"
        % ((after[0] - mid[0]) / (2 * n))
    )
    preempted = [s.preempt_ns for s in split.snapshot().stats.values()]
    assert sum(preempted) > 0  # the program really followed the thread off CPU and back


def read_and_report(threads: int, reasons: int) -> None:
    """The keyed map filled with threads x reasons entries (the reading and reporting path of the
    threads' slots is the same decoding, per row)."""
    source = LiveSource(ARM64, attach=False, max_keys=threads * reasons + 1024).open()
    stats = source.bpf["stats"]
    key_t, leaf_t = stats.Key, stats.Leaf
    t0 = time.perf_counter()
    keys = (key_t * (threads * reasons))()
    leaves = (leaf_t * (threads * reasons))()
    i = 0
    for tid in range(threads):
        for r in range(reasons):
            k = keys[i]
            k.tgid, k.tid, k.code, k.detail = 1000 + tid // 64, 100000 + tid, TRAP, ECS[r]
            lf = leaves[i]
            lf.pairs, lf.total_ns, lf.min_ns, lf.max_ns = 10, 10000, 500, 2000
            lf.hist[40], lf.hist[41] = 5, 5
            i += 1
    try:
        stats.items_update_batch(keys, leaves)
    except Exception:
        for k, lf in zip(keys, leaves):
            stats[k] = lf
    fill = time.perf_counter() - t0
    with paused_gc():  # as the command does
        t1 = time.perf_counter()
        snap = source.snapshot()
        t2 = time.perf_counter()
        report = build_report(snap, label)
        text = format_table(report)
        t3 = time.perf_counter()
    source.close()
    assert len(report.rows) == threads * reasons and text.count("\n") == threads * reasons
    print(
        "Read and report %d threads x %d reasons = %d rows (map filled in %.2fs):"
        % (threads, reasons, threads * reasons, fill)
    )
    print("  read maps:  %.3f s" % (t2 - t1))
    print("  report:     %.3f s" % (t3 - t2))
    print("  total:      %.3f s  (goal < 1 s)" % (t3 - t1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=100_000)
    p.add_argument("--reasons", type=int, default=5, choices=range(1, len(ECS) + 1))
    p.add_argument("--threads", type=int, default=10_000)
    p.add_argument("--baseline", default="", metavar="REV", help="also run the default program of git revision REV")
    args = p.parse_args()
    ctypes.CDLL(None)
    cost_per_pair(args.pairs, args.reasons, args.baseline)
    read_and_report(args.threads, 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
