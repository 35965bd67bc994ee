"""The aggregation model shared by every source and view.

Sources (live BPF maps, trace files) produce :class:`Snapshot` objects: cumulative statistics per
(tgid, tid, exit code, detail) plus health counters. Views never look at sources; they receive
:class:`Report` objects built here, by grouping and sorting snapshot rows.

The pairing rules are those of the kernel side (``bpf/kvmexit.bpf.c``):

- a ``kvm_exit`` starts a timed exit for its thread; the next ``kvm_entry`` on that thread
  completes it (a *pair*), and only pairs contribute time;
- an exit still waiting for its entry when a snapshot is taken is *open*;
- an exit followed by another exit on the same thread, with no entry between, is *unfinished*;
- an entry with no exit before it is an *unpaired entry* and is ignored;
- an open exit whose thread has died is *abandoned*: counted as unfinished and in the health
  totals, and removed, so thread churn cannot leak map entries.

So ``exits = pairs + unfinished + open``, and averages divide by ``pairs`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "HIST_SLOTS",
    "ExitKey",
    "ExitStats",
    "Health",
    "ThreadInfo",
    "Snapshot",
    "Row",
    "Report",
    "GROUPINGS",
    "SORT_KEYS",
    "bucket_bounds",
    "hist_slot",
    "percentile",
    "delta",
    "build_report",
]

#: Number of log2 latency buckets; must equal KVMEXIT_HIST_SLOTS in bpf/kvmexit.h.
HIST_SLOTS = 40


@dataclass(frozen=True, order=True)
class ExitKey:
    tgid: int
    tid: int
    code: int
    detail: int


@dataclass(frozen=True)
class ExitStats:
    """Cumulative statistics for one key. ``open`` is a gauge taken at snapshot time."""

    pairs: int = 0
    unfinished: int = 0
    open: int = 0
    total_ns: int = 0
    min_ns: Optional[int] = None
    max_ns: Optional[int] = None
    halt_ns: int = 0
    hist: Tuple[int, ...] = (0,) * HIST_SLOTS

    @property
    def exits(self) -> int:
        return self.pairs + self.unfinished + self.open

    def merge(self, other: ExitStats) -> ExitStats:
        return ExitStats(
            pairs=self.pairs + other.pairs,
            unfinished=self.unfinished + other.unfinished,
            open=self.open + other.open,
            total_ns=self.total_ns + other.total_ns,
            min_ns=_opt(min, self.min_ns, other.min_ns),
            max_ns=_opt(max, self.max_ns, other.max_ns),
            halt_ns=self.halt_ns + other.halt_ns,
            hist=tuple(a + b for a, b in zip(self.hist, other.hist)),
        )


def _opt(fn: Callable[[int, int], int], a: Optional[int], b: Optional[int]) -> Optional[int]:
    if a is None:
        return b
    if b is None:
        return a
    return fn(a, b)


@dataclass(frozen=True)
class Health:
    """What could not be paired or recorded. Every exit is accounted for somewhere."""

    unpaired_entries: int = 0
    start_map_full: int = 0
    stats_map_full: int = 0
    #: Open exits of threads that died before their entry; removed so the map does not leak.
    abandoned: int = 0

    def minus(self, other: Health) -> Health:
        return Health(
            self.unpaired_entries - other.unpaired_entries,
            self.start_map_full - other.start_map_full,
            self.stats_map_full - other.stats_map_full,
            self.abandoned - other.abandoned,
        )


@dataclass(frozen=True)
class ThreadInfo:
    comm: str = ""
    vm: Optional[str] = None
    vcpu: Optional[int] = None


@dataclass(frozen=True)
class Snapshot:
    """Cumulative state of one source at one moment."""

    arch: str
    stats: Mapping[ExitKey, ExitStats]
    health: Health = Health()
    threads: Mapping[int, ThreadInfo] = field(default_factory=dict)
    #: Monotonic time of the snapshot in ns (source clock), used for interval lengths.
    time_ns: int = 0


def delta(current: Snapshot, previous: Snapshot) -> Snapshot:
    """What happened between two snapshots of the same source.

    Counters and histograms subtract exactly, since nothing is ever cleared in the kernel;
    ``open`` stays a gauge, so the exits of consecutive deltas add up to the cumulative total.
    MIN and MAX are not subtractable and stay cumulative (since the start of tracing).
    """
    stats = {}
    for key, cur in current.stats.items():
        prev = previous.stats.get(key)
        if prev is None:
            stats[key] = cur
            continue
        d = ExitStats(
            pairs=cur.pairs - prev.pairs,
            unfinished=cur.unfinished - prev.unfinished,
            open=cur.open - prev.open,
            total_ns=cur.total_ns - prev.total_ns,
            min_ns=cur.min_ns,
            max_ns=cur.max_ns,
            halt_ns=cur.halt_ns - prev.halt_ns,
            hist=tuple(a - b for a, b in zip(cur.hist, prev.hist)),
        )
        if d.pairs or d.unfinished or d.open:
            stats[key] = d
    for key, prev in previous.stats.items():
        if key not in current.stats:
            # Only a key that held nothing but an open exit can vanish: the exit was then recorded
            # under another key (openEuler: its class arrives after kvm_exit). Drop the gauge.
            stats[key] = ExitStats(open=-prev.open)
    threads = dict(previous.threads)
    threads.update(current.threads)
    return Snapshot(
        arch=current.arch,
        stats=stats,
        health=current.health.minus(previous.health),
        threads=threads,
        time_ns=current.time_ns - previous.time_ns,
    )


def hist_slot(ns: int) -> int:
    """The log2 bucket of a duration, exactly as the BPF side computes it.

    bcc's ``bpf_log2l(v)`` is ``floor(log2(v)) + 1`` for ``v >= 1`` and 1 for 0, so slot ``i``
    holds ``[2**(i-1), 2**i - 1]``; the last slot also holds everything longer.
    """
    return min(max(ns.bit_length(), 1), HIST_SLOTS - 1)


def bucket_bounds(slot: int) -> Tuple[int, int]:
    """Inclusive ns range of a log2 bucket (as bcc's ``print_log2_hist`` labels it)."""
    if slot <= 1:
        return 0, 1
    return 1 << (slot - 1), (1 << slot) - 1


def percentile(stats: ExitStats, q: float) -> Optional[int]:
    """Upper bound of the bucket holding the q-th percentile, clamped to [min, max].

    Log2 buckets bound a percentile within a factor of two; the bound is exact when the bucket
    holds the maximum. ``None`` without completed pairs.
    """
    total = sum(stats.hist)
    if total <= 0:
        return None
    rank = max(1, math.ceil(total * q / 100.0))
    seen = 0
    for slot, n in enumerate(stats.hist):
        seen += n
        if seen >= rank:
            upper = bucket_bounds(slot)[1]
            if stats.max_ns is not None:
                upper = min(upper, stats.max_ns)
            if stats.min_ns is not None:
                upper = max(upper, stats.min_ns)
            return upper
    return None  # pragma: no cover - unreachable: seen reaches total


@dataclass(frozen=True)
class Row:
    """One line of a report: a group and its statistics."""

    tgid: Optional[int]
    tid: Optional[int]
    comm: Optional[str]
    vm: Optional[str]
    vcpu: Optional[int]
    reason: Optional[str]
    code: Optional[int]
    detail: Optional[int]
    stats: ExitStats

    @property
    def count(self) -> int:
        return self.stats.exits

    @property
    def avg_ns(self) -> Optional[float]:
        return self.stats.total_ns / self.stats.pairs if self.stats.pairs else None

    @property
    def halt_share(self) -> Optional[float]:
        """Fraction of the timed exit->entry time the vCPU spent halted (WFx/HLT idling)."""
        return self.stats.halt_ns / self.stats.total_ns if self.stats.total_ns else None

    def p(self, q: float) -> Optional[int]:
        return percentile(self.stats, q)


@dataclass(frozen=True)
class Report:
    rows: Sequence[Row]
    health: Health
    arch: str
    group_by: str
    #: Totals over all rows (before --top), for the closing self-check line.
    totals: ExitStats


#: Which identity fields each grouping keeps; the others are merged away.
GROUPINGS: Dict[str, Tuple[str, ...]] = {
    "thread": ("tgid", "tid", "comm", "vm", "vcpu", "reason"),
    "vcpu": ("tgid", "tid", "comm", "vm", "vcpu"),
    "vm": ("tgid", "vm"),
    "reason": ("reason",),
}

SORT_KEYS: Dict[str, Callable[[Row], object]] = {
    "count": lambda r: -r.count,
    "total": lambda r: -r.stats.total_ns,
    "avg": lambda r: -(r.avg_ns or 0.0),
    "max": lambda r: -(r.stats.max_ns or 0),
    "p99": lambda r: -(r.p(99) or 0),
    "tid": lambda r: (r.tgid or 0, r.tid or 0),
    "reason": lambda r: r.reason or "",
}


def build_report(
    snapshot: Snapshot,
    label: Callable[[str, int, int], str],
    group_by: str = "thread",
    sort: str = "count",
    top: Optional[int] = None,
    reasons: Iterable[str] = (),
    vms: Iterable[str] = (),
) -> Report:
    """Group, filter and sort a snapshot into report rows.

    ``label`` names an exit from ``(arch, code, detail)``; ``reasons`` and ``vms`` keep only the
    given names (case-insensitive; a reason also matches by its raw number, e.g. ``0x24``).
    """
    if group_by not in GROUPINGS:
        raise ValueError("unknown grouping %r" % group_by)
    keep = GROUPINGS[group_by]
    wanted_reasons = {r.lower() for r in reasons}
    wanted_vms = set(vms)
    groups: Dict[tuple, ExitStats] = {}
    ident: Dict[tuple, dict] = {}
    totals = ExitStats()
    for key, st in snapshot.stats.items():
        name = label(snapshot.arch, key.code, key.detail)
        if wanted_reasons and not _reason_matches(name, wanted_reasons):
            continue
        info = snapshot.threads.get(key.tid, ThreadInfo())
        if wanted_vms and info.vm not in wanted_vms:
            continue
        full = {
            "tgid": key.tgid,
            "tid": key.tid,
            "comm": info.comm,
            "vm": info.vm,
            "vcpu": info.vcpu,
            "reason": name,
        }
        gkey = tuple(full[f] for f in keep)
        if "reason" in keep:
            # Two raw codes can share a label only if unknown; keep them apart anyway.
            gkey += ((key.code, key.detail),)
        groups[gkey] = groups[gkey].merge(st) if gkey in groups else st
        if gkey not in ident:
            ident[gkey] = {f: full[f] for f in keep}
            if "reason" in keep:
                ident[gkey]["code"] = key.code
                ident[gkey]["detail"] = key.detail
        totals = totals.merge(st)
    rows: List[Row] = []
    for gkey, st in groups.items():
        f = ident[gkey]
        rows.append(
            Row(
                tgid=f.get("tgid"),
                tid=f.get("tid"),
                comm=f.get("comm"),
                vm=f.get("vm"),
                vcpu=f.get("vcpu"),
                reason=f.get("reason"),
                code=f.get("code"),
                detail=f.get("detail"),
                stats=st,
            )
        )
    if sort not in SORT_KEYS:
        raise ValueError("unknown sort key %r" % sort)
    tie = SORT_KEYS["tid"]
    primary = SORT_KEYS[sort]
    rows.sort(key=lambda r: (primary(r), tie(r), r.reason or ""))
    if top is not None:
        rows = rows[:top]
    return Report(rows=rows, health=snapshot.health, arch=snapshot.arch, group_by=group_by, totals=totals)


def _reason_matches(name: str, wanted: set) -> bool:
    """``WFx`` matches ``WFx`` and ``WFx+SERROR``; unknown codes match by their shown name."""
    return name.lower() in wanted or name.split("+")[0].lower() in wanted
