"""Human-readable tables, histograms and the closing self-check line."""

from __future__ import annotations

from typing import List, Optional

from ..model import ExitStats, Health, Report, Row, bucket_bounds

__all__ = ["format_duration", "format_table", "format_hist", "format_health"]


def format_duration(ns: Optional[float]) -> str:
    """``812ns``, ``12.3us``, ``4.56ms``, ``1.23s``; ``-`` when there is no value."""
    if ns is None:
        return "-"
    if ns < 1000:
        return "%dns" % round(ns)
    for unit, scale in (("us", 1e3), ("ms", 1e6), ("s", 1e9)):
        value = ns / scale
        if value < 1000 or unit == "s":
            return "%.3g%s" % (value, unit) if value < 100 else "%d%s" % (round(value), unit)
    raise AssertionError("unreachable")  # pragma: no cover


def _dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


_IDENT_COLUMNS = {
    "tgid": ("TGID", ">"),
    "tid": ("TID", ">"),
    "vm": ("VM", "<"),
    "vcpu": ("VCPU", ">"),
    "reason": ("REASON", "<"),
}

_IDENT_BY_GROUP = {
    "thread": ("tgid", "tid", "vm", "vcpu", "reason"),
    "vcpu": ("tgid", "tid", "vm", "vcpu"),
    "vm": ("tgid", "vm"),
    "reason": ("reason",),
}


def _halt(row: Row) -> str:
    share = row.halt_share
    return "-" if share is None else "%d%%" % round(share * 100)


def _cells(row: Row, ident: tuple) -> List[str]:
    cells = [_dash(getattr(row, f)) for f in ident]
    cells += [
        str(row.count),
        format_duration(row.avg_ns),
        format_duration(row.stats.min_ns),
        format_duration(row.stats.max_ns),
        format_duration(row.p(99)),
        _halt(row),
    ]
    return cells


def format_table(report: Report) -> str:
    """Aligned columns; HALT% is the share of exit->entry time the vCPU spent halted."""
    ident = _IDENT_BY_GROUP[report.group_by]
    headers = [_IDENT_COLUMNS[f][0] for f in ident] + ["COUNT", "AVG", "MIN", "MAX", "P99", "HALT%"]
    aligns = [_IDENT_COLUMNS[f][1] for f in ident] + [">"] * 6
    body = [_cells(r, ident) for r in report.rows]
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(headers)]

    def line(cells: List[str]) -> str:
        out = []
        for cell, width, align in zip(cells, widths, aligns):
            out.append(cell.rjust(width) if align == ">" else cell.ljust(width))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers)] + [line(c) for c in body])


def format_hist(row: Row, width: int = 40) -> str:
    """A bcc-style log2 histogram of one row's exit->entry times."""
    hist = row.stats.hist
    used = [i for i, n in enumerate(hist) if n]
    title = " ".join(_dash(x) for x in (row.tgid, row.tid, row.vm, row.reason) if x is not None)
    if not used:
        return "%s: no completed pairs" % title
    peak = max(hist)
    lines = ["%s: %d pairs" % (title, row.stats.pairs), "%24s : %-10s |%s|" % ("ns", "count", "distribution")]
    for slot in range(used[0], used[-1] + 1):
        lo, hi = bucket_bounds(slot)
        n = hist[slot]
        bar = "*" * round(width * n / peak) if n else ""
        lines.append("%11d -> %-10d : %-10d |%-*s|" % (lo, hi, n, width, bar))
    return "\n".join(lines)


def format_health(report: Report, why_empty: Optional[str] = None) -> str:
    """The closing self-check line: where every exit went."""
    t: ExitStats = report.totals
    h: Health = report.health
    if t.exits == 0 and h.unpaired_entries == 0:
        return "kvmexit: no KVM exits traced" + (" (%s)" % why_empty if why_empty else "")
    return (
        "kvmexit: %d exits: %d paired, %d open, %d unfinished; %d unpaired entries; "
        "map full: %d start, %d stats; %d abandoned by exited threads"
        % (
            t.exits,
            t.pairs,
            t.open,
            t.unfinished,
            h.unpaired_entries,
            h.start_map_full,
            h.stats_map_full,
            h.abandoned,
        )
    )
