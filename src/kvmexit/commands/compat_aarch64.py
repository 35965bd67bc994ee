"""``kvmexit-aarch64 [-h] [duration]``: the original script's usage and columns, done right.

Prints ``TGID TID COMM KVM_EXIT_REASON COUNT AVG_TIME(ns)`` once, after ``duration`` seconds or
Ctrl-C. Unlike the original, the thread name is plain text, IRQ exits are labelled IRQ (not
UNKNOWN_EC), and AVG_TIME divides by completed exit->entry pairs only.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

from ..cli import build_parser, run_command
from ..model import Report, build_report, delta
from ..names import NameResolver
from ..reasons import label
from ..views import format_health, printable
from .common import positive_float, require_stdout
from .live import StopRequest, announce, open_live

__all__ = ["main", "format_compat"]

DESCRIPTION = "Count KVM exits per thread and reason, with the average exit->entry time (kvmexit-aarch64 compatible)."
EPILOG = """\
examples:
  kvmexit-aarch64       # trace until Ctrl-C
  kvmexit-aarch64 10    # trace for 10 seconds

For filters, intervals, percentiles and JSON/CSV output use `kvmexit`.
"""


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("duration", nargs="?", type=positive_float, help="seconds to trace (default: until Ctrl-C)")


def format_compat(report: Report) -> str:
    lines = ["%-8s %-8s %-16s %-16s %-10s %s" % ("TGID", "TID", "COMM", "KVM_EXIT_REASON", "COUNT", "AVG_TIME(ns)")]
    for r in report.rows:
        avg = "-" if r.avg_ns is None else "%d" % round(r.avg_ns)
        lines.append(
            "%-8d %-8d %-16s %-16s %-10d %s"
            % (r.tgid or 0, r.tid or 0, printable(r.comm or ""), r.reason, r.count, avg)
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    require_stdout()
    source = open_live(NameResolver())
    try:
        with StopRequest() as stop:
            first = source.snapshot()
            announce(source, args.duration)
            stop.sleep_until(time.monotonic() + args.duration if args.duration else None, source.sweep, source.wait)
            report = build_report(delta(source.snapshot(), first), label, sort="tid")
    finally:
        source.close()
    print(format_compat(report))
    print(format_health(report), file=sys.stderr)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command(build_parser("aarch64"), run, argv)


if __name__ == "__main__":
    sys.exit(main())
