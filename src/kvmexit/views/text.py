"""Human-readable tables, histograms and the closing self-check line."""

from __future__ import annotations

import operator
from typing import Callable, List, Optional, Sequence, Tuple

from ..model import SPLIT_FIELDS, ExitStats, Health, Report, Row, bucket_bounds, kernel_ns, percentile

__all__ = ["accounting", "format_duration", "format_table", "format_hist", "format_health", "printable", "split_shown"]


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``, ``\\u202e``).

    VM names (QEMU ``-name``, libvirt, a names file) and thread names are chosen by whoever runs
    the guest: printed raw, an escape sequence in one would reach the terminal (retitle it, hide
    rows, ...). Only what is printed as text is escaped; JSON keeps the exact string.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def format_duration(ns: Optional[float]) -> str:
    """``812ns``, ``12.3us``, ``4.56ms``, ``1.23s``; ``-`` when there is no value."""
    if ns is None:
        return "-"
    if ns < 1e3:
        return "%dns" % round(ns)
    if ns < 1e6:
        value, unit = ns / 1e3, "us"
    elif ns < 1e9:
        value, unit = ns / 1e6, "ms"
    else:
        value, unit = ns / 1e9, "s"
    return "%.3g%s" % (value, unit) if value < 100 else "%d%s" % (round(value), unit)


def _dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


_IDENT_COLUMNS = {
    "tgid": ("TGID", ">"),
    "tid": ("TID", ">"),
    "vm": ("VM", "<"),
    "vcpu": ("VCPU", ">"),
    "reason": ("REASON", "<"),
    "sub": ("SUB", "<"),
}

_IDENT_BY_GROUP = {
    "thread": ("tgid", "tid", "vm", "vcpu", "reason"),
    "vcpu": ("tgid", "tid", "vm", "vcpu"),
    "vm": ("tgid", "vm"),
    "reason": ("reason",),
    "sub": ("reason", "sub"),
}


def _ident_columns(report: Report) -> tuple:
    ident = _IDENT_BY_GROUP[report.group_by]
    if report.by_sub and "sub" not in ident:
        ident = (*ident, "sub")
    return ident


def _cells(
    row: Row, ident: Callable[[Row], tuple], halt_known: bool, guest_known: bool, split: Sequence[str]
) -> List[str]:
    # The hot loop of big reports (10^5 rows): no per-cell helper calls.
    cells = ["-" if v is None or v == "" else str(v) for v in ident(row)]
    if not "".join(cells).isprintable():
        cells = [printable(c) for c in cells]
    st = row.stats
    pairs = st.pairs
    total = st.total_ns
    cells += [
        str(st.exits),
        format_duration(total / pairs) if pairs else "-",
        format_duration(st.min_ns),
        format_duration(st.max_ns),
        format_duration(percentile(st, 99)),
        "%d%%" % round(100 * st.halt_ns / total) if total and halt_known else "-",
    ]
    if split:
        cells += [_share(getattr(st, f) if f != "kernel" else kernel_ns(st), total) for f in split]
    if guest_known:
        whole = total + st.guest_ns
        cells.append("%.1f%%" % (100 * total / whole) if whole else "-")
    return cells


def _share(part: Optional[int], total: int) -> str:
    return "%d%%" % round(100 * part / total) if total and part is not None else "-"


#: The split's columns (with the parts known): each part's share of the exit time, beside HALT%.
_SPLIT_COLUMNS = (("kernel", "KERN%"), ("vmm_ns", "VMM%"), ("preempt_ns", "PREEMPT%"), ("blocked_ns", "BLOCKED%"))


def split_shown(report: Report) -> Tuple[str, ...]:
    """The split's parts a table shows: none unless one of them was measured; the kernel's part
    only when every other part (halt included) is known."""
    known = [f for f in SPLIT_FIELDS if f not in report.unknown]
    if not known:
        return ()
    kernel = len(known) == len(SPLIT_FIELDS) and report.halt_known
    return tuple(f for f, _ in _SPLIT_COLUMNS if (kernel if f == "kernel" else f in known))


def format_table(report: Report) -> str:
    """Aligned columns; HALT% is the share of exit->entry time the vCPU spent halted ("-" when
    halts were not traced); with the split measured, KERN%, VMM%, PREEMPT% and BLOCKED% the other
    parts' shares; EXIT% (where guest time was measured) the exit time's share of exit + guest time."""
    ident = _ident_columns(report)
    split = split_shown(report)
    halt_known = report.halt_known
    split_names = dict(_SPLIT_COLUMNS)
    headers = [_IDENT_COLUMNS[f][0] for f in ident] + ["COUNT", "AVG", "MIN", "MAX", "P99", "HALT%"]
    guest_known = "guest_ns" not in report.unknown
    headers += [split_names[f] for f in split] + (["EXIT%"] if guest_known else [])
    aligns = [_IDENT_COLUMNS[f][1] for f in ident] + [">"] * (len(headers) - len(ident))
    getter = operator.attrgetter(*ident)
    fields = getter if len(ident) > 1 else lambda r: (getter(r),)  # attrgetter of one name: no tuple
    body = [_cells(r, fields, halt_known, guest_known, split) for r in report.rows]
    widths = [max(len(h), max(map(len, map(operator.itemgetter(i), body)), default=0)) for i, h in enumerate(headers)]
    template = "  ".join("{:%s%d}" % (a, w) for a, w in zip(aligns, widths))
    return "\n".join(template.format(*cells).rstrip() for cells in [headers, *body])


def format_hist(row: Row, width: int = 40) -> str:
    """A bcc-style histogram of one row's exit->entry times, in the log-linear buckets the
    kernel keeps (4 per power of two)."""
    hist = row.stats.hist
    used = [i for i, n in enumerate(hist) if n]
    title = printable(" ".join(_dash(x) for x in (row.tgid, row.tid, row.vm, row.reason, row.sub) if x is not None))
    if not used:
        return "%s: no completed pairs" % title
    peak = max(hist)
    lines = [
        "%s: %d pairs, stddev %s" % (title, row.stats.pairs, format_duration(row.stats.stddev_ns)),
        "%24s : %-10s |%s|" % ("ns", "count", "distribution"),
    ]
    for slot in range(used[0], used[-1] + 1):
        lo, hi = bucket_bounds(slot)
        n = hist[slot]
        bar = "*" * round(width * n / peak) if n else ""
        lines.append("%11d -> %-10d : %-10d |%-*s|" % (lo, hi, n, width, bar))
    return "\n".join(lines)


def accounting(report: Report) -> str:
    """Where every exit went (``exits = paired + open + unfinished + abandoned``), and what could
    not be paired or recorded: the closing line's text, shared by every view."""
    t: ExitStats = report.totals
    h: Health = report.health
    text = (
        "%d exits: %d paired, %d open, %d unfinished, %d abandoned by exited threads; "
        "%d unpaired entries; map full: %d start, %d stats"
        % (
            t.exits,
            t.pairs,
            t.open,
            t.unfinished,
            t.abandoned,
            h.unpaired_entries,
            h.start_map_full,
            h.stats_map_full,
        )
    )
    if h.sub_map_full:  # only with --sub: those pairs are in their reason's "-" row
        text += ", %d sub-reason (in their reason's - row)" % h.sub_map_full
    return text


def format_health(report: Report, why_empty: Optional[str] = None) -> str:
    """The closing self-check line: where every exit went."""
    if report.totals.exits == 0 and report.health.unpaired_entries == 0:
        return "kvmexit: no KVM exits traced" + (" (%s)" % why_empty if why_empty else "")
    return "kvmexit: " + accounting(report)
