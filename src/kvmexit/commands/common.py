"""Options and output shared by the live tool and ``report``: one model, thin views."""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO

from ..errors import UsageError
from ..model import GROUPINGS, SORT_KEYS, SUB_GROUPINGS, Report, SlowExit, Snapshot, build_report
from ..reasons import is_reason_name, label, reason_names
from ..reasons.subreasons import sub_label
from ..streams import OutputError, stdout_is_closed
from ..views import format_health
from ..views.registry import View, ViewOptions, make_view

__all__ = [
    "add_filter_options",
    "add_output_options",
    "add_slow_option",
    "duration_ns",
    "bounded_int",
    "check_reasons",
    "describe_filters",
    "make_report",
    "wants_sub",
    "Emitter",
    "SlowPrinter",
    "positive_float",
    "positive_int",
    "PID_MAX_LIMIT",
    "require_stdout",
]

#: The kernel's largest possible pid (PID_MAX_LIMIT on 64-bit): no process or thread id exceeds it.
PID_MAX_LIMIT = 4194304


def positive_float(text: str) -> float:
    """argparse type for durations and intervals: 0 would mean "forever" or a busy loop."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive: %r" % text)
    if math.isinf(value):
        raise argparse.ArgumentTypeError("must be finite: %r (leave it out to trace until Ctrl-C)" % text)
    return value


_DURATION_UNITS = (("ns", 1), ("us", 1000), ("\u00b5s", 1000), ("ms", 1000000), ("s", 1000000000))
#: The largest threshold: a u64 of ns, and far beyond any exit (about 584 years).
_MAX_DURATION_NS = (1 << 64) - 1


def duration_ns(text: str) -> int:
    """argparse type for ``--slower-than``: ``500us``, ``2.5ms``, ``1s`` (a unit is required) -> ns."""
    value = text.strip()
    units = [u for u in sorted(_DURATION_UNITS, key=lambda u: -len(u[0])) if value.endswith(u[0])]
    if units:
        unit, scale = units[0]
        number = value[: -len(unit)].strip()
    else:
        raise argparse.ArgumentTypeError("%r has no unit: give ns, us, ms or s (for example 500us)" % text)
    try:
        ns = float(number) * scale if "." in number or "e" in number.lower() else int(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError("not a duration: %r (for example 500us, 2.5ms)" % text) from None
    if not 0 <= ns <= _MAX_DURATION_NS or ns != ns:
        raise argparse.ArgumentTypeError("out of range: %r" % text)
    return int(ns)


def add_slow_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--slower-than",
        type=duration_ns,
        metavar="DURATION",
        help="also log every exit that took longer than DURATION (500us, 2ms, 1s), one line each as it "
        "happens (JSON lines with --json): time, VM, vCPU, thread, reason, sub-reason, duration, halted time, "
        "guest PC, ESR (arm64) or exit qualification (x86)",
    )


def bounded_int(low: int, high: int, what: str = "") -> Callable[[str], int]:
    """argparse type for an integer in ``[low, high]``; ``what`` names the range in errors."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("not an integer: %r" % text) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                "%s: must be %d to %d" % (text, low, high) + (" (%s)" % what if what else "")
            )
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


_task_id = bounded_int(1, PID_MAX_LIMIT, "a process or thread id")


def _task_ids(text: str) -> List[int]:
    """bcc kvmexit's ``-T 1,2,3``."""
    return [_task_id(part) for part in text.split(",")]


class _ExtendAction(argparse.Action):
    """``action="extend"`` (Python 3.8+) for 3.7."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), *values])


class _RefusedOption(argparse.Action):
    """An option of bcc's kvmexit that kvmexit does not take: refused by name, with the way to do it here."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        parser.error("%s is bcc kvmexit's option, not kvmexit's: %s" % ("/".join(self.option_strings), self.const))


def positive_int(text: str) -> int:
    """argparse type for counts and sizes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1: %r" % text)
    return value


def add_filter_options(
    parser: argparse.ArgumentParser, reasons: bool = True, bcc: bool = True, title: str = "filters"
) -> argparse._ArgumentGroup:
    """-p/--pid, -t/--tid, -T/--tids and --vm (bounded task ids), for every command that traces
    live or reads a trace; ``reasons``: also --reason (a filter of the view); ``bcc``: also bcc
    kvmexit's -a and -v (they are about the report's rows)."""
    g = parser.add_argument_group(title)
    g.add_argument(
        "-p",
        "--pid",
        dest="pids",
        type=_task_id,
        action="append",
        default=[],
        metavar="TGID",
        help="only this VM process (repeatable)",
    )
    g.add_argument(
        "-t",
        "--tid",
        dest="tids",
        type=_task_id,
        action="append",
        default=[],
        metavar="TID",
        help="only this thread (repeatable)",
    )
    g.add_argument(
        "-T",
        "--tids",
        dest="tids",
        type=_task_ids,
        action=_ExtendAction,
        metavar="TID,TID",
        help="only these threads (as bcc's kvmexit -T)",
    )
    g.add_argument(
        "--vm",
        dest="vms",
        action="append",
        default=[],
        metavar="NAME",
        help="only this guest, by QEMU -name or libvirt domain (repeatable); live, also one that starts later",
    )
    if not reasons:
        return g
    g.add_argument(
        "--reason",
        dest="reasons",
        action="append",
        default=[],
        metavar="NAME",
        help="only this exit reason, e.g. WFx, IRQ, HLT, EC_0x2a (repeatable)",
    )
    if not bcc:
        return g
    # bcc's kvmexit options: -T is above; -a is what kvmexit does anyway; -v has no kernel-side
    # equivalent here (a vCPU is a thread: its TID is in the VCPU column).
    g.add_argument(
        "-a",
        "--alltids",
        dest="by",
        action="store_const",
        const="thread",
        default=argparse.SUPPRESS,  # --by owns the default
        help="one row per thread and reason (as bcc's kvmexit -a; the default, --by thread)",
    )
    g.add_argument(
        "-v",
        "--vcpu",
        action=_RefusedOption,
        metavar="VCPU",
        const="filter the vCPU's thread with -t TID (the VCPU column names each thread's vCPU), or use --by vcpu",
        help="refused (bcc kvmexit's vCPU filter): use -t TID of the vCPU's thread",
    )
    return g


def add_output_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("output")
    g.add_argument(
        "--by",
        choices=sorted(GROUPINGS),
        default="thread",
        help="group rows (default: thread); sub: per reason and sub-reason",
    )
    g.add_argument(
        "--sub",
        action="store_true",
        help="split rows by sub-reason (a SUB column: WFI, PSCI_CPU_ON64, ICC_SGI1R_EL1 write, mmio-vmm 0x9000000)",
    )
    g.add_argument("--sort", choices=sorted(SORT_KEYS), default="count", help="sort rows (default: count)")
    g.add_argument("--top", type=positive_int, metavar="N", help="show only the first N rows")
    g.add_argument("--hist", action="store_true", help="print a latency histogram per row (4 buckets per power of two)")
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON document per report (schema kvmexit/2)")
    fmt.add_argument("--csv", action="store_true", help="CSV, one line per row")
    g.add_argument(
        "--html",
        metavar="FILE",
        help="also write one self-contained HTML page with plots (needs matplotlib)",
    )
    g.add_argument("--force", action="store_true", help="overwrite the --html FILE if it exists")


#: Examples of reason names per architecture, for the hint of an unknown --reason.
_REASON_EXAMPLES = {"arm64": "IRQ, WFx, DABT_LOW, or EC_0x2a", "x86": "HLT, EPT_VIOLATION, hlt, npf, or VMX_0x99"}


def check_reasons(arch: str, reasons: Sequence[str]) -> None:
    """Refuse a ``--reason`` that no exit of ``arch`` can have, suggesting close names."""
    for reason in reasons:
        if is_reason_name(arch, reason):
            continue
        by_lower = {n.lower(): n for n in reason_names(arch)}
        close = difflib.get_close_matches(reason.split("+", 1)[0].lower(), list(by_lower), n=3)
        if close:
            hint = "did you mean %s?" % " or ".join(by_lower[c] for c in close)
        else:
            hint = "%s reasons are named as in the REASON column: %s" % (arch, _REASON_EXAMPLES.get(arch, ""))
        raise UsageError("argument --reason: no %s exit is named %r" % (arch, reason), hint=hint)


def require_stdout() -> None:
    """Refuse to start tracing when the report could go nowhere."""
    if stdout_is_closed():
        raise OutputError("standard output is closed: the report would go nowhere", hint="redirect it to a file")


def describe_filters(args: argparse.Namespace) -> str:
    """The filters given, as typed: ``-p 1 --vm web01``."""
    parts = ["-p %d" % p for p in args.pids] + ["-t %d" % t for t in args.tids]
    parts += ["--vm %s" % v for v in args.vms] + ["--reason %s" % r for r in args.reasons]
    return " ".join(parts)


def wants_sub(args: argparse.Namespace) -> bool:
    """Sub-reasons asked for (``--sub`` or ``--by sub``); refused with a grouping without REASON."""
    by = getattr(args, "by", "thread")
    wanted = bool(getattr(args, "sub", False)) or by == "sub"
    if wanted and by not in SUB_GROUPINGS:
        raise UsageError(
            "argument --sub: rows grouped by %s have no REASON to split" % by,
            hint="use --by thread, --by reason or --by sub",
        )
    return wanted


def make_report(snapshot: Snapshot, args: argparse.Namespace) -> Report:
    check_reasons(snapshot.arch, args.reasons)
    by_sub = wants_sub(args)
    if by_sub and not snapshot.subs_known:
        raise UsageError(
            "--sub: this source has no sub-reasons",
            hint="trace live with kvmexit --sub, or kvmexit record --sub; a saved report keeps its reason rows",
        )
    return build_report(
        snapshot,
        label,
        group_by=args.by,
        sort=args.sort,
        top=args.top,
        reasons=args.reasons,
        vms=args.vms,
        by_sub=by_sub,
        sub_label=sub_label,
    )


class Emitter:
    """Writes each report through the views chosen by the options (:mod:`kvmexit.views.registry`:
    text, JSON or CSV on ``out``, plus an HTML page with ``--html``), then the self-check line."""

    def __init__(
        self,
        args: argparse.Namespace,
        source: Dict[str, Any],
        out: Optional[TextIO] = None,
        stamp: Optional[str] = None,
    ) -> None:
        """``stamp``: CSV's time column when there is no interval (a trace's own time); default now."""
        self.args = args
        self.source = source
        self.out = out if out is not None else sys.stdout
        self._last_empty: Optional[str] = None
        options = ViewOptions(
            source=source,
            hist=bool(getattr(args, "hist", False)),
            stamp=stamp,
            path=getattr(args, "html", None),
            force=bool(getattr(args, "force", False)),
            command=getattr(args, "command_line", None),
            sort=getattr(args, "sort", "count"),
        )
        #: Files of their own, before the stream's view (a page that fails is known first).
        self.views: List[View] = [make_view("html", self.out, options)] if options.path else []
        self.stream = make_view("json" if args.json else "csv" if args.csv else "text", self.out, options)
        self.views.append(self.stream)

    def emit(self, report: Report, interval: Optional[Dict[str, Any]] = None, why_empty: Optional[str] = None) -> None:
        for view in self.views:
            view.emit(report, interval)
        self.out.flush()
        # The self-check goes to stderr in machine formats so stdout stays parseable.
        health = format_health(report, why_empty)
        # An idle host in interval mode: say why nothing was traced once, then only when it changes.
        repeated = health == self._last_empty
        self._last_empty = health if report.totals.exits == 0 and report.health.unpaired_entries == 0 else None
        if repeated:
            return
        if self.stream.machine:
            print(health, file=sys.stderr)
        else:
            self.out.write(health + "\n")
            self.out.flush()

    def close(self, timeline: Optional[Any] = None, notes: Sequence[str] = ()) -> None:
        """Write what is written once at the end (the --html page)."""
        for view in self.views:
            view.close(timeline, notes)


class SlowPrinter:
    """Writes the slow-exit log (``--slower-than``) as exits come: one line each, or one JSON
    object per line; drops (a full perf buffer) are said on stderr as soon as they are known."""

    def __init__(self, args: argparse.Namespace, out: Optional[Any] = None, prog: str = "kvmexit") -> None:
        self.threshold_ns: int = args.slower_than
        self.json = bool(args.json)
        self.out = out if out is not None else sys.stdout
        self.prog = prog
        self.count = 0
        self.lost = 0

    def __call__(self, arch: str, e: SlowExit) -> None:
        from ..views.slow import format_slow, slow_document

        self.count += 1
        self.out.write((json.dumps(slow_document(arch, e)) if self.json else format_slow(arch, e)) + "\n")
        self.out.flush()

    def note_lost(self, total: int) -> None:
        """The source's count of dropped slow exits so far: new drops are said once."""
        if total > self.lost:
            from ..views.slow import format_slow_lost

            print(format_slow_lost(total - self.lost, total).replace("kvmexit", self.prog, 1), file=sys.stderr)
            self.lost = total

    def summary(self) -> str:
        from ..views.text import format_duration

        return "%s: slow-exit log: %d exit%s slower than %s%s" % (
            self.prog,
            self.count,
            "" if self.count == 1 else "s",
            format_duration(self.threshold_ns),
            ", %d lost (perf buffer full)" % self.lost if self.lost else "",
        )
