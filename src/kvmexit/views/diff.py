"""A comparison of two runs as a text table or a JSON document (schema ``kvmexit-diff/1``)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from ..compare import DIFF_GROUPINGS, MIN_PAIRS, Change, Diff, DiffRow, RunSide
from .text import format_duration

__all__ = ["DIFF_SCHEMA_VERSION", "diff_document", "format_diff", "method"]

DIFF_SCHEMA_VERSION = "kvmexit-diff/1"


def method(per_second: bool = True) -> str:
    """How the noise is judged, in one line (the same words as ``kvmexit diff -h`` and the README)."""
    return (
        "%s: exact Poisson rate test on the exit counts over %s; latency: Mann-Whitney U test on the "
        "histogram buckets (at least %d timed exits a side); Holm-corrected together"
        % ("rate", "each run's duration", MIN_PAIRS)
        if per_second
        else "count: exact Poisson test on the exit counts over equal exposure; latency: Mann-Whitney U test on "
        "the histogram buckets (at least %d timed exits a side); Holm-corrected together" % MIN_PAIRS
    )


_HEADERS = {"vm": ("VM", "<"), "vcpu": ("VCPU", ">"), "reason": ("REASON", "<")}


def _rate(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return "%.3g" % value if value < 1000 else "%.3gk" % (value / 1000)


def _count(value: Optional[float]) -> str:
    return "-" if value is None else "%d" % value


def _pct(rel: Optional[float]) -> str:
    return "" if rel is None else " (%+.0f%%)" % (100 * rel)


def _pair(c: Change, fmt: Callable[[Optional[float]], str], percent: bool = True) -> str:
    return "%s -> %s%s" % (fmt(c.a), fmt(c.b), _pct(c.rel) if percent else "")


def _signed_duration(ns: Optional[float]) -> str:
    if ns is None:
        return "-"
    return ("-" if ns < 0 else "+") + format_duration(abs(ns))


def _side_line(name: str, side: RunSide) -> str:
    src = side.source
    what = ", ".join(
        str(x)
        for x in (
            src.get("kind"),
            src.get("arch"),
            src.get("layout") if src.get("layout") != src.get("arch") else None,
            src.get("kernel"),
            "%.3gs" % side.seconds if side.seconds else "duration unknown",
            "%d exits" % side.totals.exits,
        )
        if x
    )
    return "%s: %s (%s)" % (name, side.label, what)


def format_diff(diff: Diff, top: Optional[int] = None) -> str:
    by_rate = diff.total.by_rate
    ident = DIFF_GROUPINGS[diff.group_by]
    headers = [_HEADERS[f][0] for f in ident] + [
        "EXITS/s" if by_rate else "EXITS",
        "AVG",
        "P50",
        "P99",
        "EXIT TIME/s" if by_rate else "EXIT TIME",
        "CHANGE",
        "VERDICT",
    ]
    aligns = [_HEADERS[f][1] for f in ident] + [">"] * 6 + ["<"]

    def cells(r: DiffRow, name: Optional[List[str]] = None) -> List[str]:
        keys = name or ["-" if v is None else str(v) for v in r.key]
        time = r.time_change
        return [
            *keys,
            _pair(r.exits_per_s, _rate) if by_rate else _pair(r.exits, _count),
            _pair(r.avg_ns, format_duration),
            _pair(r.p(50), format_duration, percent=False),
            _pair(r.p(99), format_duration, percent=False),
            _pair(time, format_duration, percent=False),
            _signed_duration(time.abs) + _pct(time.rel),
            r.verdict,
        ]

    rows = diff.rows[:top] if top is not None else diff.rows
    body = [cells(r) for r in rows]
    body.append(cells(diff.total, ["all"] + [""] * (len(ident) - 1)))
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(headers)]
    template = "  ".join("{:%s%d}" % (a, w) for a, w in zip(aligns, widths))
    lines = [_side_line("A", diff.a), _side_line("B", diff.b), ""]
    lines += [template.format(*c).rstrip() for c in [headers, *body]]
    if top is not None and len(diff.rows) > top:
        lines.append("(%d more rows; --top)" % (len(diff.rows) - top))
    lines.append("")
    if not diff.per_second:
        lines.append("kvmexit diff: --counts: counts and total times compared as they are (the same work in A and B)")
    elif not by_rate:
        lines.append("kvmexit diff: a run's duration is unknown: counts and total times are compared as they are")
    lines.append("kvmexit diff: changes beyond noise at %g: %s" % (diff.alpha, method(diff.per_second)))
    return "\n".join(lines)


def _change_dict(c: Change) -> Dict[str, Any]:
    return {"a": c.a, "b": c.b, "abs": c.abs, "rel": c.rel}


def _row_dict(r: DiffRow, ident: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = dict(zip(ident, r.key))
    out.update(
        {
            "status": r.status,
            "exits": _change_dict(r.exits),
            "exits_per_s": _change_dict(r.exits_per_s),
            "pairs": _change_dict(Change(r.a.pairs, r.b.pairs)),
            "avg_ns": _change_dict(r.avg_ns),
            "p50_ns": _change_dict(r.p(50)),
            "p90_ns": _change_dict(r.p(90)),
            "p99_ns": _change_dict(r.p(99)),
            "total_ns": _change_dict(r.total_ns),
            "time_per_s_ns": _change_dict(r.time_per_s),
            "rate_p": r.rate_p,
            "latency_p": r.latency_p,
            "rate_changed": r.rate_changed,
            "latency_changed": r.latency_changed,
            "verdict": r.verdict,
        }
    )
    return out


def _side_dict(side: RunSide) -> Dict[str, Any]:
    t = side.totals
    return {
        "path": side.label,
        "source": side.source,
        "seconds": side.seconds,
        "exits": t.exits,
        "pairs": t.pairs,
        "total_ns": t.total_ns,
    }


def diff_document(diff: Diff) -> Dict[str, Any]:
    ident = DIFF_GROUPINGS[diff.group_by]
    return {
        "schema": DIFF_SCHEMA_VERSION,
        "a": _side_dict(diff.a),
        "b": _side_dict(diff.b),
        "group_by": diff.group_by,
        "keys": list(ident),
        "alpha": diff.alpha,
        "per_second": diff.per_second,
        "method": method(diff.per_second),
        "rows": [_row_dict(r, ident) for r in diff.rows],
        "total": _row_dict(diff.total, ()),
    }
