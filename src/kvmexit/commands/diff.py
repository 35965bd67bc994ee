"""``kvmexit diff A B``: what changed between two runs (traces or saved JSON reports)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Tuple

from ..compare import DIFF_GROUPINGS, INPUT_GROUPINGS, RunSide, compare
from ..errors import KvmexitError
from ..model import build_report
from ..reasons import label
from ..sources.saved import is_saved_report, load_report
from ..sources.trace import open_input, read_trace
from ..views.diff import diff_document, format_diff, method
from .common import positive_int
from .report import summarize_health

__all__ = ["DESCRIPTION", "EPILOG", "load_side", "prepare_parser", "run"]

DESCRIPTION = (
    "Compare two runs: per VM, vCPU and exit reason, exits per second, AVG, P50, P99 and exit time per "
    "second, from A to B, sorted by the change in exit time; and whether each change is beyond noise."
)
EPILOG = """\
A and B are trace files (as for `kvmexit report`; FILE.names.json is used when present) or saved
JSON reports (`kvmexit --json`, `kvmexit report --json`; `-i --json` files are added up).

Rows are matched on what survives a re-run: VM name, vCPU index (a thread without one: its name)
and exit reason, never thread ids. Rows only in B are "new", only in A "gone". Runs of different
length compare by rate: exits and exit time per second of the time the counts cover (a saved
report's "seconds", a trace's first to last kvm event). A fixed workload (the same work in A and
B) runs longer when it is slower, which changes every rate: compare those with --counts.

noise: a change is reported as one only when a test says it is beyond noise:
  rate     exact Poisson rate test (conditional binomial) on the exit counts over the durations
           (--counts: over equal exposure, "count"); bursty exits vary more than Poisson counts,
           so read a lone rate change on a bursty row (IRQ) with care
  latency  Mann-Whitney U test on the histogram buckets (8+ timed exits a side); a change
           inside one bucket is not seen
  All p-values of the comparison are Holm-corrected together at --alpha (default 0.05).

examples:
  kvmexit diff before.trace after.trace
  kvmexit --json 30 > a.json; (change something); kvmexit --json 30 > b.json; kvmexit diff a.json b.json
  kvmexit diff --by vm --json a.json b.json
"""


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="trace file or saved JSON report (the baseline)")
    parser.add_argument("b", metavar="B", help="trace file or saved JSON report (the run to compare)")
    parser.add_argument(
        "--by",
        choices=sorted(DIFF_GROUPINGS),
        default="thread",
        help="match rows per vCPU thread and reason (default), per vCPU, per VM or per reason",
    )
    parser.add_argument("--top", type=positive_int, metavar="N", help="show only the first N rows (text)")
    parser.add_argument(
        "--alpha", type=_alpha, default=0.05, help="family-wise error rate of the noise tests (default 0.05)"
    )
    parser.add_argument(
        "--counts",
        action="store_true",
        help="compare counts and total times, not rates: for runs that did the same work (a fixed workload)"
        " rather than ran the same time",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document (schema kvmexit-diff/1)")
    parser.add_argument(
        "--html", metavar="FILE", help="also write one HTML page, A and B side by side (needs matplotlib)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite the --html FILE if it exists")


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text) from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1: %r" % text)
    return value


def load_side(path: str, group_by: str) -> Tuple[RunSide, str]:
    """One side of a diff, and the grouping its rows came in."""
    if path == "-":
        raise KvmexitError("kvmexit diff reads files, not standard input")
    stream, _ = open_input(path)
    try:
        saved = is_saved_report(stream)
    finally:
        stream.close()
    if saved:
        rep = load_report(path)
        if group_by not in INPUT_GROUPINGS[rep.group_by]:
            raise KvmexitError(
                "%s is a report grouped by %s: it cannot be compared --by %s" % (path, rep.group_by, group_by),
                hint="diff --by %s, or save the report grouped by thread (the default)"
                % " or --by ".join(INPUT_GROUPINGS[rep.group_by]),
            )
        return RunSide(path, rep.report.rows, rep.seconds, rep.report.totals, rep.source), rep.group_by
    result = read_trace(path)
    for line in summarize_health(result.health, "kvmexit diff"):
        print(line, file=sys.stderr)
    report = build_report(result.snapshot, label)
    seconds = result.snapshot.time_ns / 1e9 if result.snapshot.time_ns else None
    return RunSide(path, report.rows, seconds, report.totals, result.info.source()), "thread"


def run(args: argparse.Namespace) -> int:
    if args.html:  # before reading: a page that cannot be written fails now
        from ..views.html import check_writable, require_matplotlib

        require_matplotlib()
        check_writable(args.html, args.force)
    a, _ = load_side(args.a, args.by)
    b, _ = load_side(args.b, args.by)
    if a.source.get("arch") != b.source.get("arch"):
        raise KvmexitError(
            "%s is %s and %s is %s: exit reasons of different architectures do not compare"
            % (args.a, a.source.get("arch"), args.b, b.source.get("arch"))
        )
    diff = compare(a, b, args.by, args.alpha, per_second=not args.counts)
    document = diff_document(diff)
    if args.json:
        sys.stdout.write(json.dumps(document) + "\n")
    else:
        sys.stdout.write(format_diff(diff, args.top) + "\n")
    if args.html:
        from ..views.html import render_diff_page, write_new

        page = render_diff_page(diff, document, format_diff(diff), method(diff.per_second))
        write_new(args.html, page, args.force)
    return 0
