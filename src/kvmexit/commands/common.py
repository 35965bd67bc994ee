"""Options and output shared by the live tool and ``report``: one model, thin views."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, Optional, TextIO

from ..model import GROUPINGS, SORT_KEYS, Report, Snapshot, build_report
from ..reasons import label
from ..views import format_csv, format_health, format_hist, format_table, report_document

__all__ = ["add_filter_options", "add_output_options", "make_report", "Emitter", "positive_float", "positive_int"]


def positive_float(text: str) -> float:
    """argparse type for durations and intervals: 0 would mean "forever" or a busy loop."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive: %r" % text)
    return value


def positive_int(text: str) -> int:
    """argparse type for counts and sizes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1: %r" % text)
    return value


def add_filter_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("filters")
    g.add_argument(
        "-p",
        "--pid",
        dest="pids",
        type=int,
        action="append",
        default=[],
        metavar="TGID",
        help="only this VM process (repeatable)",
    )
    g.add_argument(
        "-t",
        "--tid",
        dest="tids",
        type=int,
        action="append",
        default=[],
        metavar="TID",
        help="only this thread (repeatable)",
    )
    g.add_argument(
        "--vm",
        dest="vms",
        action="append",
        default=[],
        metavar="NAME",
        help="only this guest, by QEMU -name or libvirt domain (repeatable)",
    )
    g.add_argument(
        "--reason",
        dest="reasons",
        action="append",
        default=[],
        metavar="NAME",
        help="only this exit reason, e.g. WFx, IRQ, HLT, EC_0x2a (repeatable)",
    )


def add_output_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--by", choices=sorted(GROUPINGS), default="thread", help="group rows (default: thread)")
    g.add_argument("--sort", choices=sorted(SORT_KEYS), default="count", help="sort rows (default: count)")
    g.add_argument("--top", type=positive_int, metavar="N", help="show only the first N rows")
    g.add_argument("--hist", action="store_true", help="print a log2 latency histogram per row")
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON document per report (schema kvmexit/1)")
    fmt.add_argument("--csv", action="store_true", help="CSV, one line per row")


def make_report(snapshot: Snapshot, args: argparse.Namespace) -> Report:
    return build_report(
        snapshot,
        label,
        group_by=args.by,
        sort=args.sort,
        top=args.top,
        reasons=args.reasons,
        vms=args.vms,
    )


class Emitter:
    """Writes reports in the chosen format; keeps the CSV header to one per stream."""

    def __init__(self, args: argparse.Namespace, source: Dict[str, Any], out: TextIO = sys.stdout) -> None:
        self.args = args
        self.source = source
        self.out = out
        self._csv_header = True

    def emit(self, report: Report, interval: Optional[Dict[str, Any]] = None, why_empty: Optional[str] = None) -> None:
        a = self.args
        if a.json:
            doc = report_document(report, self.source, interval, with_hist=True)
            self.out.write(json.dumps(doc, sort_keys=False) + "\n")
        elif a.csv:
            stamp = interval["end"] if interval else time.strftime("%Y-%m-%dT%H:%M:%S")
            self.out.write(format_csv(report, time=stamp, header=self._csv_header))
            self._csv_header = False
        else:
            if interval:
                self.out.write("%s (%.1fs)\n" % (interval["end"], interval["seconds"]))
            self.out.write(format_table(report) + "\n")
            if a.hist:
                for row in report.rows:
                    self.out.write("\n" + format_hist(row) + "\n")
            self.out.write("\n")
        self.out.flush()
        # The self-check goes to stderr in machine formats so stdout stays parseable.
        health = format_health(report, why_empty)
        if a.json or a.csv:
            print(health, file=sys.stderr)
        else:
            self.out.write(health + "\n")
            self.out.flush()
