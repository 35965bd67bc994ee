#!/usr/bin/env python3
"""Throughput and memory of ``kvmexit report`` on big synthetic traces, one core.

For each input format (ftrace text with the record-tgid column, trace-cmd report, perf script)
it writes a synthetic arm64 trace of ``--lines`` lines (default 5,000,000: 4 VMs x 4 vCPU
threads, kvm_exit/kvm_entry pairs of 6 reasons, a kvm_vcpu_wakeup in WFx exits, some sched
lines), then times, in a fresh process pinned to one CPU:

- ``kvmexit report --json FILE`` (the whole command: read, pair, build the report), and
- the floor: one ``awk`` pass counting lines by event name.

It prints lines/s for both and the peak RSS of the report process; peak RSS is also measured on a
trace of ``--small`` lines (default 1,000,000) to show that memory does not grow with length.

    python3 bench/report_bench.py [--lines N] [--small N] [--formats ftrace,perf] [--keep DIR]

Figures on the development machine (x86_64 VM, 2 vCPUs, Python 3.11.2, mawk 1.3.4), 5M lines:

    format     report l/s   awk l/s   ratio   peak RSS at 1M / 5M lines
    ftrace      1,104,675  8,206,872   7.4x   23.4 MB / 23.4 MB
    trace-cmd   1,099,208  7,870,203   7.2x   23.4 MB / 23.4 MB
    perf        1,057,829  7,157,083   6.8x   23.4 MB / 23.4 MB

Where the time goes (ftrace): about 45% in parsing (``split``, the cached-prefix lookup, the
timestamp ``int``), 55% in pairing and accounting (dict lookups, list updates per pair).
"""

from __future__ import annotations

import argparse
import os
import shutil
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
        extra.append(_hole(fmt, Event(0, vcpu, tid, tgid, comm, "sched_switch", "prev_comm=x prev_pid=1 ==> next")))
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


def _ts(t: int, digits: int, div: int) -> str:
    sec, ns = divmod(t, 1_000_000_000)
    return "%5d.%0*d" % (sec, digits, ns // div)


CHILD = r"""
import os, resource, sys, time
sys.path.insert(0, %(src)r)
try:
    os.sched_setaffinity(0, {%(cpu)d})
except (AttributeError, OSError):
    pass
from kvmexit.cli import main
t0 = time.perf_counter()
with open(os.devnull, "w") as null:
    old = sys.stdout
    sys.stdout = null
    rc = main(["report", "--json", %(path)r])
    sys.stdout = old
dt = time.perf_counter() - t0
print(rc, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def time_report(path: str, cpu: int) -> Tuple[float, int]:
    code = CHILD % {"src": os.path.abspath(SRC), "cpu": cpu, "path": path}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rc, dt, rss = p.stdout.split()
    assert rc == "0", p.stderr
    return float(dt), int(rss)


AWK = '{ n = split($0, a, ": "); if (n > 1) c[a[2]]++ } END { for (k in c) if (c[k] > 1000) print k, c[k] }'


def time_awk(path: str, cpu: int) -> Tuple[float, str]:
    awk = shutil.which("mawk") or shutil.which("awk") or "awk"
    cmd = [awk, AWK, path]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True)
    return time.perf_counter() - t0, os.path.basename(awk)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=5_000_000)
    ap.add_argument("--small", type=int, default=1_000_000)
    ap.add_argument("--formats", default="ftrace,trace-cmd,perf")
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--keep", metavar="DIR", help="write the traces here and keep them")
    a = ap.parse_args()
    d = a.keep or tempfile.mkdtemp(prefix="kvmexit-bench-")
    os.makedirs(d, exist_ok=True)
    print(
        "python %s, one core (CPU %d); %d-line traces, peak RSS also at %d lines"
        % (sys.version.split()[0], a.cpu, a.lines, a.small)
    )
    print(
        "%-10s %10s %10s %12s %12s %8s %11s %11s"
        % ("format", "lines", "MB", "report l/s", "awk l/s", "ratio", "RSS small", "RSS big")
    )
    results: Dict[str, Tuple[float, float]] = {}
    try:
        for fmt in a.formats.split(","):
            small = os.path.join(d, "small." + fmt)
            big = os.path.join(d, "big." + fmt)
            write_trace(small, fmt, a.small)
            n = write_trace(big, fmt, a.lines)
            mb = os.path.getsize(big) / 1e6
            _, rss_small = time_report(small, a.cpu)
            dt, rss_big = time_report(big, a.cpu)
            adt, awk = time_awk(big, a.cpu)
            results[fmt] = (n / dt, n / adt)
            print(
                "%-10s %10d %10.0f %12.0f %12.0f %7.1fx %9.1fMB %9.1fMB"
                % (fmt, n, mb, n / dt, n / adt, dt / adt, rss_small / 1024, rss_big / 1024)
            )
            if not a.keep:
                os.unlink(small)
                os.unlink(big)
        print("floor: %s counting lines by event name" % awk)
    finally:
        if not a.keep:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
