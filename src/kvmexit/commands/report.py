"""``kvmexit report FILE|-``: the live tool's views, from a recorded text trace.

Reads ftrace text (``trace``/``trace_pipe``, also of instances), ``trace-cmd report`` or
``perf script`` output of kvm:kvm_exit/kvm:kvm_entry (plain, gzip or xz; ``-`` is stdin), pairs
the events by the kernel's rules and prints the same table, histogram, JSON or CSV as ``kvmexit``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Dict, Iterator, List, Optional

from ..errors import BadTrace, KvmexitError, UsageError
from ..model import SORT_KEYS
from ..reasons import label
from ..sources.saved import is_saved_report, load_report
from ..sources.trace import FORMATS, LAYOUTS, TraceResult, open_input, read_trace
from ..sources.trace.formats import MAX_LINE
from ..sources.trace.pairing import TraceHealth
from ..sources.trace.parallel import MIN_RANGE
from ..sources.trace.slow import SlowLog
from ..sources.trace.timebins import TimeBins
from ..streams import InputError, stdin_is_closed
from ..timeline import from_intervals
from .common import (
    Emitter,
    SlowPrinter,
    add_filter_options,
    add_output_options,
    add_slow_option,
    describe_filters,
    make_report,
    positive_int,
)

__all__ = [
    "DESCRIPTION",
    "EPILOG",
    "EXAMPLE_TRACE",
    "EXAMPLE_NAMES",
    "EXAMPLE_NOTE",
    "prepare_parser",
    "run",
    "report_example",
    "report_trace",
    "summarize_health",
]

DESCRIPTION = "Report KVM exits from a recorded trace: same views as the live tool, offline."
EPILOG = """\
inputs (detected, or forced with --format):
  ftrace     /sys/kernel/tracing/trace, trace_pipe, instances/NAME/trace (record-tgid optional)
  trace-cmd  trace-cmd report -i trace.dat
  perf       perf script (kvm:kvm_exit, kvm:kvm_entry)
  gzip and xz files are read transparently, also on stdin.

examples:
  kvmexit record -o vm.trace -d 10 && kvmexit report vm.trace
  kvmexit report --by vm --sort total vm.trace
  trace-cmd report -i trace.dat | kvmexit report --format trace-cmd -
  kvmexit report --example          the small arm64 trace shipped with kvmexit
"""

_DATA = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "data"))
#: The shipped example trace (package data) and its provenance note.
EXAMPLE_TRACE = os.path.join(_DATA, "example-arm64.trace.gz")
EXAMPLE_NAMES = EXAMPLE_TRACE[: -len(".gz")] + ".names.json"
EXAMPLE_NOTE = os.path.join(_DATA, "EXAMPLE.md")


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", nargs="?", metavar="FILE|-", help="trace file, saved JSON report (kvmexit --json), or - (stdin)"
    )
    parser.add_argument("--example", action="store_true", help="report on the small arm64 trace shipped with kvmexit")
    parser.add_argument("--format", choices=FORMATS, help="input format (default: detected)")
    parser.add_argument(
        "--layout", choices=LAYOUTS, help="kernel tracepoint layout (default: from the names file or detected)"
    )
    parser.add_argument(
        "--names", metavar="FILE", help="names side file written by kvmexit record (default: FILE.names.json)"
    )
    parser.add_argument("--no-names", action="store_true", help="ignore the names side file")
    parser.add_argument(
        "--jobs",
        type=positive_int,
        metavar="N",
        help="processes reading a plain trace file, each a part of it, with the same result as one "
        "(default: the usable CPUs for a file of %d MiB or more; 1: this process only). Compressed "
        "files, standard input, --slower-than and --html are read in one process" % (2 * MIN_RANGE >> 20),
    )
    add_filter_options(parser)
    add_output_options(parser)
    add_slow_option(parser)


def _fmt_list(items: List[str], limit: int = 8) -> str:
    text = ", ".join(items[:limit])
    return text + (", ..." if len(items) > limit else "")


def summarize_health(h: TraceHealth, prog: str = "kvmexit report") -> List[str]:
    """One-line notes for stderr: malformed lines, ring-buffer losses, clock oddities."""
    out = []
    if h.malformed:
        out.append(
            "%s: %d malformed line%s skipped (line %s)"
            % (
                prog,
                h.malformed,
                "" if h.malformed == 1 else "s",
                ", ".join(str(n) for n in h.malformed_lines)
                + (", ..." if h.malformed > len(h.malformed_lines) else ""),
            )
            + ("; %d of them longer than %d KiB" % (h.too_long, MAX_LINE // 1024) if h.too_long else "")
        )
    if h.truncated:
        out.append("%s: warning: the compressed trace is truncated (%s); read up to there" % (prog, h.truncated))
    if h.lost:
        cpus = [
            "CPU %d (%s)" % (c, "unknown number" if n is None else "%d events" % n) for c, n in sorted(h.lost.items())
        ]
        msg = "%s: events lost on %s; pairing across the gap is unreliable" % (prog, _fmt_list(cpus))
        if h.reset_by_loss:
            msg += ": %d open exit%s of thread%s %s closed as unfinished" % (
                h.reset_by_loss,
                "" if h.reset_by_loss == 1 else "s",
                "" if len(h.reset_threads) == 1 else "s",
                _fmt_list([str(t) for t in sorted(h.reset_threads)]),
            )
        out.append(msg)
    if h.recorded_lost:
        out.append(
            "%s: the recording lost events (ring-buffer overrun): %s"
            % (prog, _fmt_list(["CPU %d: %d" % (c, n) for c, n in sorted(h.recorded_lost.items())]))
        )
    if h.negative:
        out.append("%s: %d pairs had the entry before the exit (clock skew), counted as 0ns" % (prog, h.negative))
    return out


def report_trace(
    result: TraceResult,
    args: argparse.Namespace,
    source: Optional[Dict[str, Any]] = None,
    time_bins: Optional[TimeBins] = None,
) -> int:
    """Print the views of one trace result with the shared options; notes go to stderr."""
    notes = summarize_health(result.health)
    for line in notes:
        print(line, file=sys.stderr)
    report = make_report(result.snapshot, args)
    if not report.rows and _filtering(args):
        raise _matched_nothing(args)
    ended = result.info.ended
    # CSV's time column: when the trace was taken (its end, as live's is an interval's end).
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ended)) if ended is not None else ""
    emitter = Emitter(args, source or result.info.source(), out=sys.stdout, stamp=stamp)
    emitter.emit(report)
    timeline = time_bins.timeline(result.snapshot.arch, label) if time_bins is not None else None
    emitter.close(timeline, notes)
    return 0


def _time_bins(args: argparse.Namespace) -> Optional[TimeBins]:
    """Per-time-bin counts for the heatmaps, only when a page is wanted (the reader's default path
    stays as it is)."""
    return TimeBins() if getattr(args, "html", None) else None


def report_saved(args: argparse.Namespace) -> int:
    """The views of a saved JSON report (``kvmexit --json``), read back and validated."""
    saved = load_report(args.file)
    intervals = [(float(i["seconds"]), rows) for i, rows in zip(saved.intervals, saved.interval_rows)]
    if saved.snapshot is not None:
        snap = saved.snapshot
        if args.pids or args.tids:
            keep = {k: v for k, v in snap.stats.items() if _wanted(k.tgid, k.tid, args.pids, args.tids)}
            snap = replace(snap, stats=keep)
            intervals = [
                (sec, [r for r in rows if _wanted(r.tgid, r.tid, args.pids, args.tids)]) for sec, rows in intervals
            ]
        report = make_report(snap, args)
    else:
        if args.by != saved.group_by or _filtering(args):
            raise KvmexitError(
                "%s is a report grouped by %s: it can only be shown as it is" % (args.file, saved.group_by),
                hint="--by %s without filters, or save the report grouped by thread (the default)" % saved.group_by,
            )
        rows = sorted(saved.report.rows, key=SORT_KEYS[args.sort])[: args.top]
        report = replace(saved.report, rows=rows)
    if not report.rows and _filtering(args):
        raise _matched_nothing(args)
    emitter = Emitter(args, saved.source, out=sys.stdout)
    emitter.emit(report)
    emitter.close(from_intervals(intervals) if len(intervals) > 1 else None)
    return 0


def _wanted(tgid: Optional[int], tid: Optional[int], pids: List[int], tids: List[int]) -> bool:
    return (not pids or tgid in pids) and (not tids or tid in tids)


def _is_saved(path: str) -> bool:
    stream, _ = open_input(path)
    try:
        return is_saved_report(stream)
    finally:
        stream.close()


def _filtering(args: argparse.Namespace) -> bool:
    return bool(args.pids or args.tids or args.vms or args.reasons)


def _matched_nothing(args: argparse.Namespace) -> KvmexitError:
    """One rule for every filter: one that matches no exit of the trace is an error naming it."""
    return KvmexitError("no exit in the trace matches %s" % describe_filters(args))


def _read_filtered(path: str, args: argparse.Namespace, **options: Any) -> TraceResult:
    """``read_trace`` with the thread filters applied while reading. If no KVM event is left,
    read again unfiltered (only on that error path) to tell an empty trace from a filter that
    matches nothing."""
    try:
        return read_trace(path, tids=args.tids, tgids=args.pids, **options)
    except BadTrace:
        if not (args.tids or args.pids):
            raise
        options.pop("slow", None)  # what was logged was logged once
        read_trace(path, **options)  # raises BadTrace again if the trace itself is empty
        raise _matched_nothing(args) from None


def report_example(args: argparse.Namespace, why: Optional[str] = None) -> int:
    """Report on the shipped arm64 example trace, saying so on stderr (one line).

    ``args`` needs the attributes of :func:`add_filter_options` and :func:`add_output_options`
    (the live command has them); ``why`` (e.g. "live tracing needs root") is appended to the note.
    The live command can call this as its fallback when live tracing is impossible.
    """
    note = "kvmexit: showing the example trace shipped with kvmexit (%s), not this machine" % _example_kind()
    if why:
        note += ": " + why
    print(note, file=sys.stderr)
    bins = _time_bins(args)
    with _slow_log(args) as slow:
        result = _read_filtered(
            EXAMPLE_TRACE,
            args,
            names_path=EXAMPLE_NAMES,
            display_path="example:" + os.path.basename(EXAMPLE_TRACE),
            time_bins=bins,
            slow=slow,
        )
    source = result.info.source()
    source["example"] = True
    return report_trace(result, args, source, bins)


@contextmanager
def _slow_log(args: argparse.Namespace) -> Iterator[Optional[SlowLog]]:
    """With --slower-than, the log of a trace's slow exits, printed as they are read; its
    summary on stderr once the trace is read."""
    threshold = getattr(args, "slower_than", None)  # the live command's fallback may not have it
    if threshold is None:
        yield None
        return
    printer = SlowPrinter(args, sys.stdout, prog="kvmexit report")
    yield SlowLog(threshold, printer)
    print(printer.summary(), file=sys.stderr)


def _example_kind() -> str:
    try:
        with open(EXAMPLE_NOTE) as f:
            first = f.readline().strip().lstrip("# ")
        return first or "arm64"
    except OSError:
        return "arm64"


def run(args: argparse.Namespace) -> int:
    if args.slower_than is not None and args.csv:
        raise UsageError("--slower-than does not combine with --csv", hint="use --json for machine-readable slow exits")
    if args.html:  # before reading: a page that cannot be written fails now
        from ..views.html import check_writable, require_matplotlib

        require_matplotlib()
        check_writable(args.html, args.force)
    if args.example:
        if args.file:
            raise KvmexitError("give either FILE or --example, not both")
        return report_example(args)
    if not args.file:
        raise KvmexitError("no trace file given", hint="kvmexit report FILE (or - for stdin), or --example")
    if args.file == "-" and stdin_is_closed():
        raise InputError("standard input is closed", hint="give a file, or pipe the trace in")
    if args.file != "-" and _is_saved(args.file):
        if args.slower_than is not None:
            raise UsageError("--slower-than needs a trace: a saved report holds no single exits")
        return report_saved(args)
    bins = _time_bins(args)
    with _slow_log(args) as slow:
        result = _read_filtered(
            args.file,
            args,
            fmt=args.format,
            layout=args.layout,
            names_path=args.names,
            use_names=not args.no_names,
            display_path="<stdin>" if args.file == "-" else args.file,
            time_bins=bins,
            slow=slow,
            jobs=args.jobs,
        )
    return report_trace(result, args, time_bins=bins)
