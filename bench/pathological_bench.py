#!/usr/bin/env python3
"""Time to read one pathological line, per shape and size: parsing must grow linearly.

Each shape is a line built to make a backtracking regex work hard (long whitespace runs, digit
runs, many candidate comm/tid splits, ...). It is placed after a small valid trace and the whole
is read with every grammar (``--format`` ftrace, trace-cmd, perf, and detection). For each shape
the time is printed at sizes n, 2n, 4n, 8n with the growth from n to 8n: about 8x is linear,
64x quadratic. Before the grammars were made linear, 500 spaces took 10 s with the perf grammar
(cubic) and 200,000 spaces inside an ftrace trace did not finish in 300 s.

    python3 bench/pathological_bench.py [--size N] [--repeat R]

It exits non-zero when a shape grows more than ``--max-growth`` (default 24x) from n to 8n, or
when a line takes longer than ``--max-seconds`` (default 5 s): a generous guard, not a tight time.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "src"))

from kvmexit.errors import BadTrace  # noqa: E402
from kvmexit.sources.trace import read_stream  # noqa: E402

VALID = os.path.join(HERE, os.pardir, "tests", "data", "traces", "arm64-upstream.synthetic.trace")

#: name -> line of about n bytes
SHAPES: Dict[str, Callable[[int], bytes]] = {
    "spaces": lambda n: b" " * n,
    "tabs then x": lambda n: b"\t" * n + b"x",
    "x then spaces": lambda n: b"x" + b" " * n,
    "digits": lambda n: b"1" * n,
    "timestamp fraction": lambda n: b"  CPU 0/KVM-136   [001] ....  18." + b"1" * n + b": kvm_exit: x",
    "'-1 ' runs": lambda n: b"-1 " * (n // 3),
    "'-1 [1] ' runs": lambda n: b"-1 [1] " * (n // 7),
    "'a 1 ' runs": lambda n: b"a 1 " * (n // 4),
    "': ' runs": lambda n: b": " * (n // 2),
    "'(1) ' runs": lambda n: b"-1 (1) " * (n // 7),
    "'CPU:1 ' runs": lambda n: b"CPU:1 " * (n // 6),
    "'#' then spaces": lambda n: b"#" * (n // 2) + b" " * (n // 2) + b"x",
    "comm of spaces": lambda n: b" " * n + b"-136 [001] .... 18.1: kvm_exit: x",
    "payload spaces": lambda n: b"  CPU 0/KVM-136   [001] ....  18.1: kvm_exit:" + b" " * n,
    "NUL": lambda n: b"\0" * n,
    "invalid UTF-8": lambda n: b"\xff\xfe" * (n // 2),
}

FORMATS: List[Optional[str]] = [None, "ftrace", "trace-cmd", "perf"]


def read_once(data: bytes, fmt: Optional[str]) -> float:
    t0 = time.perf_counter()
    try:
        read_stream(io.BytesIO(data), fmt=fmt)
    except BadTrace:
        pass
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=50_000, help="smallest line length n (default 50,000)")
    ap.add_argument("--repeat", type=int, default=3, help="best of R runs (default 3)")
    ap.add_argument("--max-growth", type=float, default=24.0)
    ap.add_argument("--max-seconds", type=float, default=5.0)
    ap.add_argument(
        "--floor", type=float, default=0.005, help="times below this (s) count as this (timer and load noise)"
    )
    a = ap.parse_args()
    with open(VALID, "rb") as f:
        valid = b"".join(f.readlines()[:40])  # a few events: detection and the fast path have work
    base = min(read_once(valid, None) for _ in range(a.repeat))
    sizes = [a.size * k for k in (1, 2, 4, 8)]
    print(
        "python %s; each time is best of %d, minus the %.1f ms of the valid trace alone"
        % (sys.version.split()[0], a.repeat, base * 1e3)
    )
    print("%-20s %-9s" % ("shape", "format") + "".join("%11s" % ("n=%d" % n) for n in sizes) + "   growth n->8n")
    bad = []
    for name, make in SHAPES.items():
        for fmt in FORMATS:
            times = []
            for n in sizes:
                data = valid + make(n) + b"\n"
                t = min(read_once(data, fmt) for _ in range(a.repeat))
                times.append(max(t - base, 1e-6))
            growth = times[-1] / max(times[0], a.floor)  # below the floor, timer and load noise
            print(
                "%-20s %-9s" % (name, fmt or "detect")
                + "".join("%9.1fms" % (t * 1e3) for t in times)
                + "   %6.1fx" % growth
            )
            if growth > a.max_growth or times[-1] > a.max_seconds:
                bad.append("%s/%s" % (name, fmt or "detect"))
    if bad:
        print("NOT LINEAR: " + ", ".join(bad))
        return 1
    print("all shapes grow at most %.0fx from n to 8n (linear: 8x)" % a.max_growth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
