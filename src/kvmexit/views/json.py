"""JSON documents, schema ``kvmexit/2`` (see ``kvmexit/schema/report-v2.json``): ``kvmexit/1``
with sub-reasons (rows' ``sub`` and ``sub_value``, the document's ``by_sub``), guest time and the
split of the exit time (null where not measured)."""

from __future__ import annotations

from typing import AbstractSet, Any, Dict, Optional

from ..model import SPLIT_FIELDS, ExitStats, Report, Row, bucket_bounds, exit_share, kernel_ns

__all__ = ["SCHEMA_VERSION", "report_document", "row_dict"]

SCHEMA_VERSION = "kvmexit/2"


def residency(st: ExitStats, halt_known: bool, unknown: AbstractSet[str]) -> Dict[str, Any]:
    """Guest time, exit share and the split of the exit time (issue 11); null where not measured."""
    out: Dict[str, Any] = {}
    guest_known = "guest_ns" not in unknown
    out["guest_ns"] = st.guest_ns if guest_known else None
    out["exit_share"] = exit_share(st) if guest_known else None
    for f in SPLIT_FIELDS:
        out[f] = getattr(st, f) if f not in unknown else None
    known = halt_known and not any(f in unknown for f in SPLIT_FIELDS)
    out["kernel_ns"] = kernel_ns(st) if known else None
    return out


def row_dict(
    row: Row, with_hist: bool = True, halt_known: bool = True, unknown: AbstractSet[str] = frozenset()
) -> Dict[str, Any]:
    st = row.stats
    out: Dict[str, Any] = {
        "tgid": row.tgid,
        "tid": row.tid,
        "comm": row.comm,
        "vm": row.vm,
        "vcpu": row.vcpu,
        "reason": row.reason,
        "code": row.code,
        "detail": row.detail,
        "sub": row.sub,
        "sub_value": row.sub_value,
        "count": row.count,
        "pairs": st.pairs,
        "open": st.open,
        "unfinished": st.unfinished,
        "abandoned": st.abandoned,
        "total_ns": st.total_ns,
        "avg_ns": row.avg_ns,
        "min_ns": st.min_ns,
        "max_ns": st.max_ns,
        "p50_ns": row.p(50),
        "p90_ns": row.p(90),
        "p99_ns": row.p(99),
        "stddev_ns": st.stddev_ns,
        "sumsq_ns2": st.sumsq_ns2,
        "halt_ns": st.halt_ns if halt_known else None,
    }
    out.update(residency(st, halt_known, unknown))
    if with_hist:
        out["hist"] = [[*bucket_bounds(i), n] for i, n in enumerate(st.hist) if n]
    return out


def report_document(
    report: Report,
    source: Dict[str, Any],
    interval: Optional[Dict[str, Any]] = None,
    with_hist: bool = True,
) -> Dict[str, Any]:
    """The whole report as a JSON-ready dict. ``source`` says where the data came from."""
    t = report.totals
    h = report.health
    if report.time_ns:
        seconds: Optional[float] = report.time_ns / 1e9
    else:
        seconds = interval["seconds"] if interval else None
    return {
        "schema": SCHEMA_VERSION,
        "source": source,
        "interval": interval,
        "seconds": seconds,
        "group_by": report.group_by,
        "by_sub": report.by_sub,
        "rows": [row_dict(r, with_hist, report.halt_known, report.unknown) for r in report.rows],
        "totals": {
            "exits": t.exits,
            "pairs": t.pairs,
            "open": t.open,
            "unfinished": t.unfinished,
            "total_ns": t.total_ns,
            "halt_ns": t.halt_ns if report.halt_known else None,
            "unpaired_entries": h.unpaired_entries,
            "start_map_full": h.start_map_full,
            "stats_map_full": h.stats_map_full,
            "sub_map_full": h.sub_map_full,
            "abandoned": t.abandoned,
            **residency(t, report.halt_known, report.unknown),
        },
    }
