"""Saved JSON reports (``kvmexit --json``, ``kvmexit report --json``) read back into the model.

A saved file holds one document, or one document per interval (``-i --json``: JSON lines, whose
counters are deltas that add up to the run's totals). Each document is validated against the JSON
Schema it names (``"schema": "kvmexit/2"`` -> ``schema/report-v2.json``; ``kvmexit/1`` is read too),
then its rows become
:class:`~kvmexit.model.Row` objects again and, for reports grouped by thread (whose rows keep the
whole key), a :class:`~kvmexit.model.Snapshot` that every grouping and view can use.

The row fields are read by the names of :class:`~kvmexit.model.ExitStats`' fields, so a field the
model gains is read back as soon as the JSON carries it under the same name, and documents of an
older schema (without it) still load with the field's default. Histogram buckets are matched by
their ``[low, high]`` bounds against this kvmexit's buckets.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import IO, Any, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from ..errors import BadTrace
from ..model import (
    HIST_SLOTS,
    SPLIT_FIELDS,
    ExitKey,
    ExitStats,
    Health,
    Report,
    Row,
    Snapshot,
    ThreadInfo,
    bucket_bounds,
    hist_slot,
    merge_all,
)

__all__ = ["BadReport", "SavedReport", "SCHEMA_DIR", "is_saved_report", "load_report", "parse_report"]

SCHEMA_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "schema"))

#: A saved report is read whole; this bounds what a hostile file can make us hold.
MAX_BYTES = 256 << 20

_SCHEMA_PREFIX = "kvmexit/"
_IDENTITY = ("tgid", "tid", "comm", "vm", "vcpu", "reason", "code", "detail")
#: Bucket bounds -> slot; slots 0 and 1 share (0, 1), and durations go to 1 (``hist_slot(0)``).
_BUCKETS = {bucket_bounds(i): i for i in range(HIST_SLOTS)}


class BadReport(BadTrace):
    """A file that looks like a saved JSON report but is not a valid one."""


@dataclass
class SavedReport:
    """What a saved file held, added up over its documents."""

    path: str
    source: Dict[str, Any]
    group_by: str
    report: Report
    #: Seconds the counts cover (sum of the intervals, or the document's ``seconds``); None if unknown.
    seconds: Optional[float]
    #: The documents' intervals, in order (empty for a report without intervals).
    intervals: List[Dict[str, Any]] = field(default_factory=list)
    #: Per interval, the rows of that interval (deltas), in the order of ``intervals``.
    interval_rows: List[List[Row]] = field(default_factory=list)
    #: The cumulative snapshot, when the rows keep the whole key (grouped by thread).
    snapshot: Optional[Snapshot] = None
    schema: str = "kvmexit/1"


def is_saved_report(stream: IO[bytes]) -> bool:
    """Whether a (peekable, decompressed) input stream holds JSON rather than a text trace."""
    peek = getattr(stream, "peek", None)
    if peek is None:
        return False
    head = peek(64)[:64].lstrip()
    return head[:1] == b"{"


def load_report(path: str) -> SavedReport:
    """Read, validate and add up a saved report (plain, gzip or xz)."""
    from .trace.formats import open_input

    stream, _ = open_input(path)
    try:
        data = stream.read(MAX_BYTES + 1)
    except (OSError, EOFError, ValueError) as e:
        raise BadReport("%s: cannot read: %s" % (path, e)) from e
    finally:
        if path != "-":
            stream.close()
    if len(data) > MAX_BYTES:
        raise BadReport("%s: a saved report larger than %d MiB is not read" % (path, MAX_BYTES >> 20))
    return parse_report(data, path)


def parse_report(data: bytes, path: str = "<report>") -> SavedReport:
    """Validate and add up the JSON documents in ``data`` (one, or one per line)."""
    docs = _documents(data, path)
    if not docs:
        raise BadReport("%s: no JSON report in the file" % path)
    schema = docs[0].get("schema") if isinstance(docs[0], dict) else None
    for i, doc in enumerate(docs):
        _validate(doc, path, i, len(docs))
    try:
        return _assemble(docs, path, str(schema))
    except (KeyError, TypeError, ValueError, OverflowError) as e:  # schema-valid but inconsistent
        raise BadReport("%s: not a consistent kvmexit report: %s" % (path, e)) from e


def _documents(data: bytes, path: str) -> List[Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadReport("%s: not UTF-8 JSON: %s" % (path, e)) from e
    decoder = json.JSONDecoder()
    docs: List[Any] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in " \t\r\n":
            pos += 1
        if pos >= end:
            return docs
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except ValueError as e:
            raise BadReport("%s: not JSON: %s" % (path, e)) from e
        except RecursionError:
            raise BadReport("%s: JSON nested too deeply" % path) from None
        docs.append(doc)


#: Schema version -> a validator for it (checking a schema itself is slow: done once).
_VALIDATORS: Dict[str, Any] = {}


def _validator(version: str, path: str) -> Any:
    if version not in _VALIDATORS:
        import jsonschema

        number = version[len(_SCHEMA_PREFIX) :] if version.startswith(_SCHEMA_PREFIX) else ""
        file = os.path.join(SCHEMA_DIR, "report-v%s.json" % number)
        if not number.isdigit() or not os.path.exists(file):
            raise BadReport(
                "%s: report schema %r is not one this kvmexit reads" % (path, version),
                hint="read it with the kvmexit that wrote it, or a newer one",
            )
        with open(file) as f:
            schema = json.load(f)
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        _VALIDATORS[version] = cls(schema)
    return _VALIDATORS[version]


def _validate(doc: Any, path: str, index: int, count: int) -> None:
    try:
        import jsonschema
    except ImportError:
        raise BadReport(
            "reading saved JSON reports needs the jsonschema module",
            hint="apt install python3-jsonschema, or pip install jsonschema",
        ) from None
    where = "%s (document %d)" % (path, index + 1) if count > 1 else path
    if not isinstance(doc, dict) or not isinstance(doc.get("schema"), str):
        raise BadReport('%s: not a kvmexit report (no "schema" field)' % where)
    validator = _validator(doc["schema"], where)
    try:
        validator.validate(doc)
    except jsonschema.ValidationError as e:
        at = "/".join(str(p) for p in e.absolute_path) or "document"
        message = e.message if len(e.message) <= 200 else e.message[:200] + "..."
        raise BadReport("%s: not a valid %s report: %s: %s" % (where, doc["schema"], at, message)) from None
    except RecursionError:
        raise BadReport("%s: JSON nested too deeply" % where) from None


def _hist(buckets: Sequence[Sequence[int]]) -> Tuple[int, ...]:
    hist = [0] * HIST_SLOTS
    for low, high, n in buckets:
        slot = _BUCKETS.get((low, high))
        if slot is None:
            # Another kvmexit's bucket (an older one had log2 buckets): count it in ours that
            # holds its upper bound.
            slot = hist_slot(high)
        hist[slot] += n
    return tuple(hist)


def _stats(row: Dict[str, Any]) -> ExitStats:
    values: Dict[str, Any] = {}
    for name in ExitStats._fields:
        if name == "hist":
            values[name] = _hist(row.get("hist") or ())
        elif name in row and row[name] is not None:
            values[name] = row[name]
    sumsq = row.get("sumsq_ns2")
    if isinstance(sumsq, int) and sumsq >= 0:  # as the kernel keeps it: (low, high) u64 words
        values["sumsq"] = (sumsq & ((1 << 64) - 1), sumsq >> 64)
    stats = ExitStats(**values)
    if stats.exits != row["count"]:
        raise ValueError("row count %d is not pairs + unfinished + open + abandoned (%d)" % (row["count"], stats.exits))
    if stats.pairs > 0 and "hist" not in row:
        raise ValueError("a row with pairs has no histogram")
    if "hist" in row and sum(stats.hist) != stats.pairs:
        raise ValueError("a row's histogram holds %d pairs, not %d" % (sum(stats.hist), stats.pairs))
    return stats


def _row(ident: Tuple[Any, ...], stats: ExitStats) -> Row:
    tgid, tid, comm, vm, vcpu, reason, code, detail = ident
    return Row(tgid, tid, comm, vm, vcpu, reason, code, detail, stats)


def _assemble(docs: List[Dict[str, Any]], path: str, schema: str) -> SavedReport:
    first = docs[0]
    for doc in docs[1:]:
        for key in ("schema", "group_by"):
            if doc[key] != first[key]:
                raise ValueError("documents differ in %s (%r, %r)" % (key, first[key], doc[key]))
        if doc["source"].get("arch") != first["source"].get("arch"):
            raise ValueError("documents of different architectures")
    intervals = [d["interval"] for d in docs if d["interval"] is not None]
    if len(docs) > 1 and len(intervals) != len(docs):
        raise ValueError("several documents without intervals cannot be added up")
    # Rows split by sub-reason (kvmexit/2, by_sub) are folded back into their reason's row: the
    # parts add up to it, and MIN/MAX are exact from the parts that have them.
    group_by = "reason" if first["group_by"] == "sub" else first["group_by"]
    per_ident: Dict[Tuple[Any, ...], List[ExitStats]] = {}
    interval_rows: List[List[Row]] = []
    health = Health()
    totals: List[ExitStats] = []
    halt_known = True
    unknown: Set[str] = set()
    for doc in docs:
        rows = []
        for r in doc["rows"]:
            st = _stats(r)
            ident = tuple(r[f] for f in _IDENTITY)
            per_ident.setdefault(ident, []).append(st)
            rows.append(_row(ident, st))
        interval_rows.append(rows)
        t = doc["totals"]
        health = Health(
            health.unpaired_entries + t["unpaired_entries"],
            health.start_map_full + t["start_map_full"],
            health.stats_map_full + t["stats_map_full"],
            health.abandoned + t["abandoned"],
            health.sub_map_full + t.get("sub_map_full", 0),
        )
        totals.append(
            ExitStats(
                pairs=t["pairs"],
                unfinished=t["unfinished"],
                open=t["open"],
                # Before rows had "abandoned", those exits were in "unfinished" and totals' count
                # of them was only a health note.
                abandoned=t["abandoned"] if all("abandoned" in r for r in doc["rows"]) else 0,
                total_ns=t["total_ns"],
                halt_ns=t["halt_ns"] or 0,
                guest_ns=t.get("guest_ns") or 0,
                vmm_ns=t.get("vmm_ns") or 0,
                preempt_ns=t.get("preempt_ns") or 0,
                blocked_ns=t.get("blocked_ns") or 0,
            )
        )
        halt_known = halt_known and t["halt_ns"] is not None
        # Fields a document does not carry (schema 1) or carries as null were not measured.
        unknown.update(f for f in ("guest_ns", *SPLIT_FIELDS) if t.get(f) is None)
    rows = [_row(ident, merge_all(parts)) for ident, parts in per_ident.items()]
    merged_totals = merge_all(totals, with_hist=False) if len(totals) > 1 else totals[0]
    seconds: Optional[float] = None
    if intervals:
        seconds = float(sum(i["seconds"] for i in intervals))
    elif first.get("seconds") is not None:
        seconds = float(first["seconds"])
    arch = first["source"]["arch"]
    time_ns = round(seconds * 1e9) if seconds else 0
    report = Report(rows, health, arch, group_by, merged_totals, halt_known, time_ns, unknown=frozenset(unknown))
    snapshot = None
    if group_by == "thread":
        snapshot = _snapshot(rows, arch, health, halt_known, seconds, frozenset(unknown))
    return SavedReport(
        path=path,
        source=dict(first["source"]),
        group_by=group_by,
        report=report,
        seconds=seconds,
        intervals=intervals,
        interval_rows=interval_rows if intervals else [],
        snapshot=snapshot,
        schema=schema,
    )


def _snapshot(
    rows: List[Row],
    arch: str,
    health: Health,
    halt_known: bool,
    seconds: Optional[float],
    unknown: FrozenSet[str] = frozenset(),
) -> Snapshot:
    stats: Dict[ExitKey, ExitStats] = {}
    threads: Dict[int, ThreadInfo] = {}
    for r in rows:
        if r.tid is None or r.code is None or r.detail is None:
            raise ValueError("a row grouped by thread lacks its tid, code or detail")
        key = ExitKey(r.tgid, r.tid, r.code, r.detail)  # None: a tgid the source did not know
        stats[key] = stats[key].merge(r.stats) if key in stats else r.stats
        threads[r.tid] = ThreadInfo(comm=r.comm or "", vm=r.vm, vcpu=r.vcpu)
    return Snapshot(
        arch=arch,
        stats=stats,
        health=health,
        threads=threads,
        time_ns=round(seconds * 1e9) if seconds else 0,
        halt_known=halt_known,
        unknown=unknown,
    )
