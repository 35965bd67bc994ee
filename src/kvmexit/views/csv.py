"""CSV output: one header, one line per row, times in ns. ``sub`` (the last column) is empty
unless the report is split by sub-reason (``--sub``)."""

from __future__ import annotations

import csv
import io
from typing import Any, Dict, Optional

from ..model import Report
from .json import row_dict
from .text import printable

__all__ = ["CSV_COLUMNS", "format_csv"]

CSV_COLUMNS = (
    "time",
    "tgid",
    "tid",
    "comm",
    "vm",
    "vcpu",
    "reason",
    "count",
    "pairs",
    "open",
    "unfinished",
    "abandoned",
    "total_ns",
    "avg_ns",
    "min_ns",
    "max_ns",
    "p50_ns",
    "p90_ns",
    "p99_ns",
    "halt_ns",
    "guest_ns",
    "exit_share",
    "kernel_ns",
    "vmm_ns",
    "preempt_ns",
    "blocked_ns",
    "sub",  # last: the columns before it keep their places
)


def format_csv(report: Report, time: Optional[str] = None, header: bool = True, escape: bool = False) -> str:
    """``escape``: escape non-printable characters in names (for a terminal; files keep them)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    if header:
        w.writeheader()
    for row in report.rows:
        d: Dict[str, Any] = row_dict(row, with_hist=False, halt_known=report.halt_known, unknown=report.unknown)
        d["time"] = time or ""
        if d["avg_ns"] is not None:
            d["avg_ns"] = "%.1f" % d["avg_ns"]
        if d["exit_share"] is not None:
            d["exit_share"] = "%.6f" % d["exit_share"]
        if escape:
            d["comm"], d["vm"] = printable(d["comm"] or ""), printable(d["vm"] or "")
        w.writerow({k: "" if v is None else v for k, v in d.items()})
    return buf.getvalue()
