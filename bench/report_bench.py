#!/usr/bin/env python3
"""Throughput and memory of ``kvmexit report`` on big synthetic traces, in one process and in
several (``--jobs``).

For each input format (ftrace text with the record-tgid column, trace-cmd report, perf script)
it writes a synthetic arm64 trace of ``--lines`` lines (default 5,000,000: 4 VMs x 4 vCPU
threads, kvm_exit/kvm_entry pairs of 6 reasons, a kvm_vcpu_wakeup in WFx exits, a sched_wakeup
line (another event) every 50 pairs), then times ``kvmexit report --json FILE`` (the whole command:
read, pair, build the report) in a fresh process with ``--jobs 1`` and with ``--jobs N`` (default
2), interleaved, ``--repeat`` times each (the best run of each is shown: the machine's other load
only slows a run down; for ``--jobs N`` also the median of its runs, which that load moves), and
the floor: one ``awk`` pass counting lines by event name. The runs read kvmexit's modules compiled
once beforehand, as an installed kvmexit does (with PYTHONDONTWRITEBYTECODE set, each would
otherwise compile them again: about 40 ms of CPU here).

It prints lines per CPU-second of ``--jobs 1`` (user + system: the per-core figure), lines per
wall-clock second of both and their ratio, the load average, and the peak RSS of both (for
``--jobs N``: the parent's peak plus its largest worker's), also on a trace of ``--small`` lines
(default 1,000,000), to show that memory does not grow with length.

    python3 bench/report_bench.py [--lines N] [--small N] [--formats ftrace,perf] [--jobs N] [--keep DIR]

The README quotes its last run (machine and load stated there). Where the time goes: parsing (one
``split``, a cached-prefix lookup, the timestamp's ``int``) and one call of the pairing engine's
rule per event; the pairs' statistics are added up in bulk per batch of lines (C loops).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, os.pardir, "src")
sys.path.insert(0, SRC)

from kvmexit.sources.trace.render import Event, entry_payload, exit_payload, render_line, wakeup_payload  # noqa: E402

REASONS = [(2, 0x24), (2, 0x16), (2, 0x18), (2, 0x01), (0, 0), (2, 0x20)]  # DABT HVC SYS WFx IRQ IABT


def templates(fmt: str) -> Tuple[List[Tuple[str, str]], List[str]]:
    """Per thread: (exit line, entry line) templates with a ``{ts}`` hole, plus wakeup/sched lines."""
    threads = []
    for vm in range(4):
        for vcpu in range(4):
            tid = 2000 + vm * 100 + vcpu
            threads.append((tid, 2000 + vm * 100 - 1, vcpu))
    out = []
    extra = []
    for tid, tgid, vcpu in threads:
        comm = "CPU %d/KVM" % vcpu
        pairs = []
        for ret, ec in REASONS:
            ex = Event(0, vcpu, tid, tgid, comm, "kvm_exit", exit_payload("arm64", ret, ec))
            en = Event(0, vcpu, tid, tgid, comm, "kvm_entry", entry_payload("arm64"))
            pairs.append((_hole(fmt, ex), _hole(fmt, en)))
        out.append(pairs)
        extra.append(_hole(fmt, Event(0, vcpu, tid, tgid, comm, "kvm_vcpu_wakeup", wakeup_payload(90000))))
        other = "comm=x pid=1 prio=120 target_cpu=000"
        extra.append(_hole(fmt, Event(0, vcpu, tid, tgid, comm, "sched_wakeup", other)))
    return out, extra  # type: ignore[return-value]


def _hole(fmt: str, ev: Event) -> str:
    marker = "77777.777777777"
    line = render_line(fmt, ev._replace(ts_ns=77777_777777777), tgid_column=True, digits=9 if fmt == "perf" else 6)
    line = line.replace(marker if fmt == "perf" else "77777.777777", "{ts}")
    return line.replace("%", "%%").replace("{ts}", "%s") + "\n"


def write_trace(path: str, fmt: str, n_lines: int) -> int:
    pairs, extra = templates(fmt)
    digits = 9 if fmt == "perf" else 6
    div = 10 ** (9 - digits)
    t = 1_000_000_000_000
    written = 0
    with open(path, "w", buffering=1 << 20) as f:
        if fmt == "ftrace":
            f.write("# tracer: nop\n#\n")
            written += 2
        elif fmt == "trace-cmd":
            f.write("cpus=4\n")
            written += 1
        i = 0
        buf: List[str] = []
        while written < n_lines:
            th = i % len(pairs)
            r = (i // len(pairs)) % len(REASONS)
            ex, en = pairs[th][r]
            t += 1370
            buf.append(ex % _ts(t, digits, div))
            written += 1
            if r == 3 and written < n_lines:  # WFx: a wakeup inside the exit
                buf.append(extra[2 * th] % _ts(t + 400, digits, div))
                written += 1
            if i % 50 == 0 and written < n_lines:
                buf.append(extra[2 * th + 1] % _ts(t + 500, digits, div))
                written += 1
            if written < n_lines:
                buf.append(en % _ts(t + 900 + (i % 7) * 300, digits, div))
                written += 1
            i += 1
            if len(buf) > 20000:
                f.write("".join(buf))
                buf = []
        f.write("".join(buf))
    return written


def _load() -> str:
    try:
        return " ".join("%.2f" % x for x in os.getloadavg())
    except OSError:
        return "unknown"


def _ts(t: int, digits: int, div: int) -> str:
    sec, ns = divmod(t, 1_000_000_000)
    return "%5d.%0*d" % (sec, digits, ns // div)


CHILD = r"""
import os, resource, sys, time
sys.path.insert(0, %(src)r)
from kvmexit.cli import main
t0, c0 = time.perf_counter(), time.process_time()
with open(os.devnull, "w") as null:
    old = sys.stdout
    sys.stdout = null
    rc = main(["report", "--json", "--jobs", %(jobs)r, %(path)r])
    sys.stdout = old
dt = time.perf_counter() - t0
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = time.process_time() - c0 + kids.ru_utime + kids.ru_stime  # the workers: only children
print(rc, dt, cpu, me.ru_maxrss, kids.ru_maxrss)
"""


#: The children's environment: they read kvmexit's compiled bytecode, as an installed kvmexit does
#: (:func:`compiled`), whatever PYTHONDONTWRITEBYTECODE says (else each run compiles every module).
CHILD_ENV = dict(os.environ)


def compiled(cache: str) -> None:
    """Compile kvmexit's modules once, into ``cache``, for the children to read."""
    CHILD_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    CHILD_ENV["PYTHONPYCACHEPREFIX"] = cache
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.abspath(SRC)], env=CHILD_ENV, check=True)


def time_report(path: str, jobs: int) -> Tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system of the report process and its workers) and peak
    RSS in KiB (the report process's peak plus its largest worker's: what they can hold at once)."""
    code = CHILD % {"src": os.path.abspath(SRC), "jobs": str(jobs), "path": path}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=CHILD_ENV)
    rc, dt, cpu_s, rss, kids = p.stdout.split()
    assert rc == "0", p.stderr
    return float(dt), float(cpu_s), int(rss) + (int(kids) if jobs > 1 else 0)


AWK = '{ n = split($0, a, ": "); if (n > 1) c[a[2]]++ } END { for (k in c) if (c[k] > 1000) print k, c[k] }'


def time_awk(path: str) -> Tuple[float, float, str]:
    """Wall and CPU seconds (of the child processes) of the awk floor."""
    awk = shutil.which("mawk") or shutil.which("awk") or "awk"
    cmd = [awk, AWK, path]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dt, cpu_s, os.path.basename(awk)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=5_000_000)
    ap.add_argument("--small", type=int, default=1_000_000)
    ap.add_argument("--formats", default="ftrace,trace-cmd,perf")
    ap.add_argument("--jobs", type=int, default=2, help="the parallel run's --jobs (default 2)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved; the best is shown")
    ap.add_argument("--keep", metavar="DIR", help="write the traces here and keep them")
    a = ap.parse_args()
    d = a.keep or tempfile.mkdtemp(prefix="kvmexit-bench-")
    os.makedirs(d, exist_ok=True)
    j = a.jobs
    print(
        "python %s; %d-line traces, peak RSS also at %d lines; best of %d interleaved runs; load average %s (%d CPUs)"
        % (sys.version.split()[0], a.lines, a.small, a.repeat, _load(), os.cpu_count() or 0)
    )
    print(
        "l/cpu-s: lines per CPU-second of --jobs 1 (user + system), the per-core figure; l/s: wall clock of "
        "--jobs 1 and --jobs %d (best run; median: of all runs); ratio: the best runs' wall-clock rates; "
        "RSS: peak of --jobs 1, and of --jobs %d's parent plus its largest worker" % (j, j)
    )
    print(
        "%-10s %9s %5s %10s %10s %10s %10s %6s %11s %8s %8s %8s %8s"
        % (
            "format",
            "lines",
            "MB",
            "j1 l/cpu-s",
            "j1 l/s",
            "j%d l/s" % j,
            "j%d median" % j,
            "ratio",
            "awk l/cpu-s",
            "RSS1 sm",
            "RSS1 big",
            "RSS%d sm" % j,
            "RSS%d big" % j,
        )
    )
    awk = "awk"
    try:
        compiled(os.path.join(d, "pycache"))
        for fmt in a.formats.split(","):
            small = os.path.join(d, "small." + fmt)
            big = os.path.join(d, "big." + fmt)
            write_trace(small, fmt, a.small)
            n = write_trace(big, fmt, a.lines)
            mb = os.path.getsize(big) / 1e6
            sizes = (("small", small), ("big", big))
            rss = {(k, size): time_report(path, k)[2] for k in (1, j) for size, path in sizes}
            best: Dict[int, Tuple[float, float]] = {}
            walls: Dict[int, List[float]] = {1: [], j: []}
            for _ in range(a.repeat):
                for k in (1, j):
                    dt, cpu_s, r = time_report(big, k)
                    rss[(k, "big")] = max(rss[(k, "big")], r)
                    walls[k].append(dt)
                    if k not in best or dt < best[k][0]:
                        best[k] = (dt, cpu_s)
            _, acpu, awk = time_awk(big)
            print(
                "%-10s %9d %5.0f %10.0f %10.0f %10.0f %10.0f %5.2fx %11.0f %6.1fMB %6.1fMB %6.1fMB %6.1fMB"
                % (
                    fmt,
                    n,
                    mb,
                    n / best[1][1],
                    n / best[1][0],
                    n / best[j][0],
                    n / statistics.median(walls[j]),
                    best[1][0] / best[j][0],
                    n / acpu,
                    rss[(1, "small")] / 1024,
                    rss[(1, "big")] / 1024,
                    rss[(j, "small")] / 1024,
                    rss[(j, "big")] / 1024,
                )
            )
            if not a.keep:
                os.unlink(small)
                os.unlink(big)
        print("floor: %s counting lines by event name (CPU time); load average now %s" % (awk, _load()))
    finally:
        if not a.keep:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
