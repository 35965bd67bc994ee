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
- an open exit whose thread has died is *abandoned* (the VMM thread exited, or was killed,
  before entering the guest again): counted as such, and its per-thread slot removed, so thread
  churn cannot leak map entries. Live, user space sees the thread gone; offline, the trace says
  so with ``sched:sched_process_exit`` (``kvmexit record`` records it); without that event an
  abandoned exit stays *open*.

So ``exits = pairs + unfinished + open + abandoned``, and averages divide by ``pairs`` only.
"""

from __future__ import annotations

import gc
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

__all__ = [
    "HIST_SLOTS",
    "HIST_SUB",
    "HIST_SUB_BITS",
    "PERCENTILE_BOUND",
    "STAT_FIELDS",
    "SPLIT_FIELDS",
    "KERNEL_FIELDS",
    "StatField",
    "ExitKey",
    "SubKey",
    "ExitStats",
    "Health",
    "ThreadInfo",
    "Snapshot",
    "Row",
    "Report",
    "GROUPINGS",
    "SUB_GROUPINGS",
    "split_by_sub",
    "SORT_KEYS",
    "SlowExit",
    "is_slower",
    "bucket_bounds",
    "exit_share",
    "hist_slot",
    "kernel_ns",
    "paused_gc",
    "percentile",
    "delta",
    "merge_all",
    "build_report",
    "merge_reports",
]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building 10^5 acyclic records.

    Snapshots and reports create only acyclic objects, but so many that the collector would
    rescan them over and over (it more than doubles the time of a 100,000-row report).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: The latency histogram is log-linear: exact below HIST_SUB ns, then HIST_SUB buckets per power
#: of two of ns, so a bucket is at most 1/HIST_SUB (25%) as wide as its lower bound; the last
#: bucket (from 2^39 ns, about 9 minutes) holds everything longer. Written into the BPF program
#: as KVMEXIT_HIST_SUB_BITS and KVMEXIT_HIST_SLOTS.
HIST_SUB_BITS = 2
HIST_SUB = 1 << HIST_SUB_BITS
HIST_MAX_OCTAVE = 39
HIST_SLOTS = HIST_SUB * (HIST_MAX_OCTAVE - HIST_SUB_BITS + 2)
#: Percentiles from the histogram are within this fraction of the exact value (below 2^39 ns).
PERCENTILE_BOUND = 1.0 / HIST_SUB


class ExitKey(NamedTuple):
    #: None where the source does not know it (a trace without tgids and no names file).
    tgid: Optional[int]
    tid: int
    code: int
    detail: int


class SubKey(NamedTuple):
    """A key with its sub-reason (``reasons/subreasons.py``; never 0: exits without one are only
    in their reason's row)."""

    tgid: Optional[int]
    tid: int
    code: int
    detail: int
    sub: int

    @property
    def exit_key(self) -> ExitKey:
        return ExitKey(self.tgid, self.tid, self.code, self.detail)


class StatField(NamedTuple):
    """One field of the statistics record (see :data:`STAT_FIELDS`)."""

    name: str
    #: How several records combine: "sum" (deltas subtract), "min" or "max" (not subtractable:
    #: deltas keep the current value; None until the first pair).
    merge: str
    #: u64 words in the kernel's ``struct kvmexit_value``: 1 a scalar, n > 1 an array (a tuple
    #: here), 0 a field user space fills in (not in the kernel's record).
    words: int = 1


#: The statistics record, the one definition the others derive from: the kernel's
#: ``struct kvmexit_value`` (generated into the program as KVMEXIT_VALUE_FIELDS), the live
#: source's decoding, the offline accumulators and :func:`merge_all`/:func:`delta`. A new summed
#: field is one line here and one in :class:`ExitStats` (checked to agree below).
STAT_FIELDS: Tuple[StatField, ...] = (
    StatField("pairs", "sum"),  # exits whose entry was seen
    StatField("unfinished", "sum"),  # exits followed by another exit before any entry
    StatField("open", "sum", 0),  # a gauge: exits waiting for their entry at snapshot time
    StatField("total_ns", "sum"),
    StatField("min_ns", "min"),
    StatField("max_ns", "max"),
    StatField("halt_ns", "sum"),  # time halted (kvm_vcpu_wakeup) inside the timed exits
    # Issue 11, guest residency: time in the guest (kvm_entry -> next kvm_exit), charged to the row
    # of that exit when it closes (paired, unfinished or abandoned).
    StatField("guest_ns", "sum"),
    # Issue 11, where the exit time went (opt-in, --split): the parts of total_ns besides halt_ns;
    # the kernel's part is what is left (Row.kernel_ns), so the parts add up exactly.
    StatField("vmm_ns", "sum"),  # on CPU in user space: kvm_userspace_exit -> back in KVM_RUN
    StatField("preempt_ns", "sum"),  # off CPU while runnable (switched out in TASK_RUNNING)
    StatField("blocked_ns", "sum"),  # off CPU sleeping, outside a halt
    StatField("sumsq", "sum", 2),  # sum of squared ns as (low, high) u64 words: see sumsq_ns2
    StatField("hist", "sum", HIST_SLOTS),  # log-linear buckets, see hist_slot
    StatField("abandoned", "sum", 0),  # exits whose thread exited before their entry
)


class ExitStats(NamedTuple):
    """Cumulative statistics for one key (fields as :data:`STAT_FIELDS`). ``open`` is a gauge
    taken at snapshot time.

    Named tuples rather than dataclasses: a busy host has 10^5 of these per report.
    """

    pairs: int = 0
    unfinished: int = 0
    open: int = 0
    total_ns: int = 0
    min_ns: Optional[int] = None
    max_ns: Optional[int] = None
    halt_ns: int = 0
    guest_ns: int = 0
    vmm_ns: int = 0
    preempt_ns: int = 0
    blocked_ns: int = 0
    sumsq: Tuple[int, ...] = (0, 0)
    hist: Tuple[int, ...] = (0,) * HIST_SLOTS
    abandoned: int = 0

    @property
    def exits(self) -> int:
        return self.pairs + self.unfinished + self.open + self.abandoned

    @property
    def sumsq_ns2(self) -> int:
        """Sum of the squared times of the pairs, in ns^2 (the kernel keeps it in 128 bits:
        low + high * 2^64; sums and differences of the words keep that meaning)."""
        return self.sumsq[0] + (self.sumsq[1] << 64)

    @property
    def stddev_ns(self) -> Optional[float]:
        """Population standard deviation of the pairs' times, exact (from the sum of squares).
        None without pairs, or when the sum of squares is unknown (0 with a non-zero total: a
        saved report from before it was kept)."""
        n = self.pairs
        if n <= 0 or (self.sumsq_ns2 == 0 and self.total_ns > 0):
            return None
        var_n2 = n * self.sumsq_ns2 - self.total_ns * self.total_ns  # n^2 * variance, exact
        return math.sqrt(max(var_n2, 0)) / n

    def merge(self, other: ExitStats) -> ExitStats:
        return merge_all((self, other))


if ExitStats._fields != tuple(f.name for f in STAT_FIELDS):  # pragma: no cover - a developer's slip
    raise AssertionError("ExitStats and STAT_FIELDS disagree")

#: The measured parts of the exit time besides ``halt_ns`` (issue 11): known only where the source
#: traced their events (live: ``--split``; offline: a trace with those events).
SPLIT_FIELDS: Tuple[str, ...] = ("vmm_ns", "preempt_ns", "blocked_ns")

#: The fields the kernel keeps, in the order of ``struct kvmexit_value``.
KERNEL_FIELDS: Tuple[StatField, ...] = tuple(f for f in STAT_FIELDS if f.words)


def _merge_one(f: StatField, values: List) -> Any:
    if f.merge == "sum":
        return tuple(map(sum, zip(*values))) if f.words > 1 else sum(values)
    present = [v for v in values if v is not None]
    if not present:
        return None
    return min(present) if f.merge == "min" else max(present)


def merge_all(items: Sequence[ExitStats], with_hist: bool = True) -> ExitStats:
    """The statistics of several keys together (without the arrays, such as the histogram, if
    not wanted: they are then left empty)."""
    if len(items) == 1:
        return items[0]
    if not items:
        return ExitStats()
    merged: List[Any] = [
        _merge_one(f, [s[i] for s in items]) if with_hist or f.words <= 1 else _DEFAULTS[i]
        for i, f in enumerate(STAT_FIELDS)
    ]
    return ExitStats(*merged)


_DEFAULTS = ExitStats()


@dataclass(frozen=True)
class Health:
    """What could not be paired or recorded. Every exit is accounted for somewhere."""

    unpaired_entries: int = 0
    start_map_full: int = 0
    stats_map_full: int = 0
    #: Open exits of threads that died before their entry (all keys; the rows have theirs).
    abandoned: int = 0
    #: Pairs not recorded under their sub-reason (map full): their reason's row has them.
    sub_map_full: int = 0

    def minus(self, other: Health) -> Health:
        return Health(
            self.unpaired_entries - other.unpaired_entries,
            self.start_map_full - other.start_map_full,
            self.stats_map_full - other.stats_map_full,
            self.abandoned - other.abandoned,
            self.sub_map_full - other.sub_map_full,
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
    #: Whether halt time was observed (kvm_vcpu_wakeup traced); if not, halt_ns means nothing.
    halt_known: bool = True
    #: Names of threads that have exited, by (tgid, tid), as they were: their tid (or pid) may
    #: belong to another thread (or VM) by now, which ``threads`` then names. Looked up first.
    retired_threads: Mapping[Tuple[int, int], ThreadInfo] = field(default_factory=dict)
    #: Exits with a sub-reason, a second time (each is also in ``stats``, its reason's row).
    subs: Mapping[SubKey, ExitStats] = field(default_factory=dict)
    #: Whether sub-reasons were traced (if not, ``subs`` is empty and means nothing).
    subs_known: bool = False

    def thread_of(self, key: ExitKey) -> ThreadInfo:
        """The names of the thread of ``key`` (as they were, if it has exited)."""
        return self.retired_threads.get((key.tgid or 0, key.tid)) or self.threads.get(key.tid, _NO_THREAD)

    #: Fields of :class:`ExitStats` this source did not measure (their 0 means unknown): see
    #: :data:`SPLIT_FIELDS` (opt-in, so unknown unless a source says otherwise) and ``guest_ns``.
    unknown: FrozenSet[str] = frozenset(SPLIT_FIELDS)


def delta(current: Snapshot, previous: Snapshot) -> Snapshot:
    """What happened between two snapshots of the same source.

    Counters and histograms subtract exactly, since nothing is ever cleared in the kernel;
    ``open`` stays a gauge, so the exits of consecutive deltas add up to the cumulative total.
    MIN and MAX are not subtractable and stay cumulative (since the start of tracing).
    """
    stats = _delta_stats(current.stats, previous.stats)
    subs = _delta_stats(current.subs, previous.subs)
    threads = dict(previous.threads)
    threads.update(current.threads)
    retired = dict(previous.retired_threads)
    retired.update(current.retired_threads)
    return Snapshot(
        arch=current.arch,
        stats=stats,
        health=current.health.minus(previous.health),
        threads=threads,
        time_ns=current.time_ns - previous.time_ns,
        halt_known=current.halt_known,
        retired_threads=retired,
        subs=subs,
        subs_known=current.subs_known,
        unknown=current.unknown,
    )


def _delta_stats(current: Mapping[Any, ExitStats], previous: Mapping[Any, ExitStats]) -> Dict[Any, ExitStats]:
    stats = {}
    for key, cur in current.items():
        prev = previous.get(key)
        if prev is None:
            stats[key] = cur
            continue
        d = ExitStats(*(_delta_one(f, c, p) for f, c, p in zip(STAT_FIELDS, cur, prev)))
        if d.pairs or d.unfinished or d.open or d.abandoned:
            stats[key] = d
    for key, prev in previous.items():
        if key not in current:
            # Only a key that held nothing but an open exit can vanish: the exit was then recorded
            # under another key (openEuler: its class arrives after kvm_exit). Drop the gauge.
            stats[key] = ExitStats(open=-prev.open)
    return stats


def _delta_one(f: StatField, cur: Any, prev: Any) -> Any:
    if f.merge != "sum":
        return cur  # min and max stay cumulative
    if f.words > 1:
        return tuple(a - b for a, b in zip(cur, prev))
    return cur - prev


def exit_share(stats: ExitStats) -> Optional[float]:
    """time exited / (time exited + time in the guest); None when both are 0."""
    whole = stats.total_ns + stats.guest_ns
    return stats.total_ns / whole if whole else None


def kernel_ns(stats: ExitStats) -> int:
    """total_ns less the other parts (halted, VMM, preempted, other blocked): never negative, since
    the kernel side charges each pair's parts within its own time."""
    return stats.total_ns - stats.halt_ns - stats.vmm_ns - stats.preempt_ns - stats.blocked_ns


def hist_slot(ns: int) -> int:
    """The log-linear bucket of a duration, exactly as the BPF side's ``hist_slot`` computes it:
    ``ns`` itself below HIST_SUB, then HIST_SUB buckets per power of two."""
    if ns < HIST_SUB:
        return max(ns, 0)
    shift = ns.bit_length() - 1 - HIST_SUB_BITS
    return min(HIST_SUB * (shift + 1) + ((ns >> shift) & (HIST_SUB - 1)), HIST_SLOTS - 1)


def bucket_bounds(slot: int) -> Tuple[int, int]:
    """Inclusive ns range of a bucket (the last one also holds everything longer)."""
    if slot < HIST_SUB:
        return slot, slot
    shift, sub = divmod(slot, HIST_SUB)
    shift -= 1
    return (HIST_SUB + sub) << shift, ((HIST_SUB + sub + 1) << shift) - 1


def percentile(stats: ExitStats, q: float) -> Optional[int]:
    """The q-th percentile (nearest rank) of the pairs' times, estimated from the histogram:
    the rank is placed by linear interpolation inside its bucket (narrowed to [min, max]); the
    top and bottom ranks are the max and min, known exactly.

    The exact value is in the same bucket, so the estimate is within PERCENTILE_BOUND (25%) of
    it (below 2^39 ns); exact below HIST_SUB ns. ``None`` without completed pairs.
    """
    hist = stats.hist
    total = sum(hist)
    if total <= 0:
        return None
    above = total - max(1, math.ceil(total * q / 100.0))  # samples ranked above the percentile
    hi, lo = stats.max_ns, stats.min_ns
    if above == 0 and hi is not None:
        return hi  # the top sample is the maximum, known exactly
    if above == total - 1 and lo is not None:
        return lo
    # Walk down from the top bucket, which is the maximum's unless a torn read says otherwise:
    # high percentiles are then found in a step or two.
    slot = HIST_SLOTS - 1
    if hi is not None:
        top = hist_slot(hi)
        if not any(hist[top + 1 :]):
            slot = top
    seen = hist[slot]
    while seen <= above:
        slot -= 1
        seen += hist[slot]
    n = hist[slot]
    index = n - 1 - (above - (seen - n))  # 0-based rank of the percentile inside its bucket
    first, last = bucket_bounds(slot)
    if hi is not None and hi < last:
        last = hi  # the samples of this bucket are within [min, max] too
    if lo is not None and lo > first:
        first = lo
    if last < first:  # a torn read of min/max against the histogram
        return first
    return first + int((index + 0.5) * (last + 1 - first) / n)


class Row:
    """One line of a report: a group and its statistics. Fields a grouping merges are None;
    ``sub`` (the sub-reason's name, ``-`` for exits without one) and ``sub_value`` (its u64) only
    in reports split by sub-reason."""

    __slots__ = ("code", "comm", "detail", "reason", "stats", "sub", "sub_value", "tgid", "tid", "vcpu", "vm")

    def __init__(
        self,
        tgid: Optional[int],
        tid: Optional[int],
        comm: Optional[str],
        vm: Optional[str],
        vcpu: Optional[int],
        reason: Optional[str],
        code: Optional[int],
        detail: Optional[int],
        stats: ExitStats,
        sub: Optional[str] = None,
        sub_value: Optional[int] = None,
    ) -> None:
        self.tgid = tgid
        self.tid = tid
        self.comm = comm
        self.vm = vm
        self.vcpu = vcpu
        self.reason = reason
        self.code = code
        self.detail = detail
        self.stats = stats
        self.sub = sub
        self.sub_value = sub_value

    def __repr__(self) -> str:
        return "Row(%s)" % ", ".join("%s=%r" % (f, getattr(self, f)) for f in self.__slots__)

    @property
    def count(self) -> int:
        return self.stats.exits

    @property
    def avg_ns(self) -> Optional[float]:
        return self.stats.total_ns / self.stats.pairs if self.stats.pairs else None

    @property
    def exit_share(self) -> Optional[float]:
        """The virtualization tax: time exited / (time exited + time in the guest)."""
        return exit_share(self.stats)

    @property
    def kernel_ns(self) -> int:
        """The host kernel's part of the exit time: what the measured parts leave (meaningful
        only where they are all known)."""
        return kernel_ns(self.stats)

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
    halt_known: bool = True
    #: How long the counts were collected (the source's clock), 0 if unknown: rates divide by it.
    time_ns: int = 0
    #: Rows are split by sub-reason (``Row.sub``).
    by_sub: bool = False
    #: Fields of the statistics the source did not measure (as Snapshot.unknown).
    unknown: FrozenSet[str] = frozenset(SPLIT_FIELDS)


#: The groupings, each with the identity fields it keeps (the others are merged away).
GROUPINGS: Dict[str, Tuple[str, ...]] = {
    "thread": ("tgid", "tid", "comm", "vm", "vcpu", "reason"),
    "vcpu": ("tgid", "tid", "comm", "vm", "vcpu"),
    "vm": ("tgid", "vm"),
    "reason": ("reason",),
    "sub": ("reason", "sub"),
}

#: Groupings that can be split by sub-reason (they keep the reason); "sub" always is.
SUB_GROUPINGS = ("thread", "reason", "sub")

#: Sort keys, largest first; ties are broken by (tgid, tid, reason) so output is stable.
SORT_KEYS: Dict[str, Callable[[Row], tuple]] = {
    "count": lambda r: (-r.stats.exits, r.tgid or 0, r.tid or 0, r.reason or "", r.sub or ""),
    "total": lambda r: (-r.stats.total_ns, r.tgid or 0, r.tid or 0, r.reason or "", r.sub or ""),
    "avg": lambda r: (-(r.avg_ns or 0.0), r.tgid or 0, r.tid or 0, r.reason or "", r.sub or ""),
    "max": lambda r: (-(r.stats.max_ns or 0), r.tgid or 0, r.tid or 0, r.reason or "", r.sub or ""),
    "p99": lambda r: (-(r.p(99) or 0), r.tgid or 0, r.tid or 0, r.reason or "", r.sub or ""),
    "tid": lambda r: (r.tgid or 0, r.tid or 0, r.reason or "", r.sub or ""),
    "reason": lambda r: (r.reason or "", r.tgid or 0, r.tid or 0, r.sub or ""),
}

_NO_THREAD = ThreadInfo()


#: tgid, tid, comm, vm, vcpu, reason, code, detail: the Row fields before ``stats``.
_Int = Optional[int]
_Str = Optional[str]
Identity = Tuple[_Int, _Int, _Str, _Str, _Int, _Str, _Int, _Int]


def _identity(group_by: str, key: ExitKey, info: ThreadInfo, name: str) -> Identity:
    """The Row fields before ``stats`` (tgid, tid, comm, vm, vcpu, reason, code, detail)."""
    if group_by == "thread":
        # The raw code stays in the identity: two unknown codes never share a row.
        return (key.tgid, key.tid, info.comm, info.vm, info.vcpu, name, key.code, key.detail)
    if group_by == "vcpu":
        return (key.tgid, key.tid, info.comm, info.vm, info.vcpu, None, None, None)
    if group_by == "vm":
        return (key.tgid, None, None, info.vm, None, None, None, None)
    return (None, None, None, None, None, name, key.code, key.detail)


def _remainder(whole: ExitStats, parts: Sequence[ExitStats]) -> ExitStats:
    """The exits of ``whole`` that are in none of ``parts`` (its sub-reasons): summed fields
    subtract exactly; MIN (MAX) is known only where it is below (above) every part's, else None."""
    done = merge_all(parts)
    out = [_delta_one(f, w, d) for f, w, d in zip(STAT_FIELDS, whole, done)]
    rest = ExitStats(*out)
    lo, hi = whole.min_ns, whole.max_ns
    rest = rest._replace(
        min_ns=lo if rest.pairs and lo is not None and (done.min_ns is None or lo < done.min_ns) else None,
        max_ns=hi if rest.pairs and hi is not None and (done.max_ns is None or hi > done.max_ns) else None,
    )
    return rest


def split_by_sub(snapshot: Snapshot) -> Iterator[Tuple[ExitKey, int, ExitStats]]:
    """(key, sub-reason, statistics) of every row of ``snapshot`` split by sub-reason: each
    reason's sub-reasons and the rest of its exits (sub-reason 0), which add up to its row."""
    parts: Dict[ExitKey, List[Tuple[int, ExitStats]]] = {}
    for sk, st in snapshot.subs.items():
        parts.setdefault(ExitKey(sk.tgid, sk.tid, sk.code, sk.detail), []).append((sk.sub, st))
    for key, st in snapshot.stats.items():
        mine = parts.pop(key, None)
        if not mine:
            yield key, 0, st
            continue
        rest = _remainder(st, [p for _, p in mine])
        if rest.exits:
            yield key, 0, rest
        for sub, p in mine:
            yield key, sub, p
    for key, mine in parts.items():  # a sub-reason whose row was not read: never dropped
        for sub, p in mine:
            yield key, sub, p


def build_report(
    snapshot: Snapshot,
    label: Callable[[str, int, int], str],
    group_by: str = "thread",
    sort: str = "count",
    top: Optional[int] = None,
    reasons: Iterable[str] = (),
    vms: Iterable[str] = (),
    by_sub: bool = False,
    sub_label: Optional[Callable[[str, int, int, int], str]] = None,
) -> Report:
    """Group, filter and sort a snapshot into report rows.

    ``label`` names an exit from ``(arch, code, detail)``; ``reasons`` and ``vms`` keep only the
    given names (case-insensitive). ``by_sub`` (implied by ``group_by="sub"``) splits each row by
    sub-reason, named by ``sub_label(arch, code, detail, sub)``; the totals are the same.
    """
    if group_by not in GROUPINGS:
        raise ValueError("unknown grouping %r" % group_by)
    if sort not in SORT_KEYS:
        raise ValueError("unknown sort key %r" % sort)
    by_sub = by_sub or group_by == "sub"
    if by_sub and (group_by not in SUB_GROUPINGS or sub_label is None):
        raise ValueError("grouping %r cannot be split by sub-reason" % group_by)
    wanted_reasons = {r.lower() for r in reasons}
    wanted_vms = set(vms)
    names: Dict[Tuple[int, int], str] = {}
    groups: Dict[Tuple[Identity, _Str, _Int], List[ExitStats]] = {}
    kept: List[ExitStats] = []
    entries: Iterable[Tuple[ExitKey, int, ExitStats]] = (
        split_by_sub(snapshot) if by_sub else ((k, 0, st) for k, st in snapshot.stats.items())
    )
    sub_names: Dict[Tuple[int, int, int], str] = {}
    for key, sub, st in entries:
        name = names.get((key.code, key.detail))
        if name is None:
            name = names[key.code, key.detail] = label(snapshot.arch, key.code, key.detail)
        if wanted_reasons and not _reason_matches(name, wanted_reasons):
            continue
        info = snapshot.thread_of(key)
        if wanted_vms and info.vm not in wanted_vms:
            continue
        ident = _identity("reason" if group_by == "sub" else group_by, key, info, name)
        sub_name: _Str = None
        if by_sub and sub_label is not None:
            sub_name = sub_names.get((key.code, key.detail, sub))
            if sub_name is None:
                sub_name = sub_names[key.code, key.detail, sub] = sub_label(snapshot.arch, key.code, key.detail, sub)
        groups.setdefault((ident, sub_name, sub if by_sub else None), []).append(st)
        kept.append(st)
    rows = [Row(*ident, merge_all(members), sub_name, sub) for (ident, sub_name, sub), members in groups.items()]
    rows.sort(key=SORT_KEYS[sort])
    if top is not None:
        rows = rows[:top]
    totals = merge_all(kept, with_hist=False) if kept else ExitStats()
    return Report(
        rows,
        snapshot.health,
        snapshot.arch,
        group_by,
        totals,
        snapshot.halt_known,
        snapshot.time_ns,
        by_sub,
        unknown=snapshot.unknown,
    )


def _reason_matches(name: str, wanted: set) -> bool:
    """``WFx`` matches ``WFx`` and ``WFx+SERROR``; unknown codes match by their shown name."""
    return name.lower() in wanted or name.split("+")[0].lower() in wanted


def merge_reports(reports: Sequence[Report], sort: str = "count") -> Report:
    """Interval reports added up into one: rows of the same identity merged (their deltas add up to
    the run's totals; MIN and MAX, cumulative in every interval, merge as they are)."""
    if not reports:
        raise ValueError("no reports to merge")
    parts: Dict[Tuple[Identity, _Str, _Int], List[ExitStats]] = {}
    for rep in reports:
        for r in rep.rows:
            ident: Identity = (r.tgid, r.tid, r.comm, r.vm, r.vcpu, r.reason, r.code, r.detail)
            parts.setdefault((ident, r.sub, r.sub_value), []).append(r.stats)
    rows = [Row(*ident, merge_all(st), sub, value) for (ident, sub, value), st in parts.items()]
    rows.sort(key=SORT_KEYS[sort])
    health = Health()
    for rep in reports:
        h = rep.health
        health = Health(
            health.unpaired_entries + h.unpaired_entries,
            health.start_map_full + h.start_map_full,
            health.stats_map_full + h.stats_map_full,
            health.abandoned + h.abandoned,
            health.sub_map_full + h.sub_map_full,
        )
    last = reports[-1]
    return Report(
        rows,
        health,
        last.arch,
        last.group_by,
        merge_all([r.totals for r in reports], with_hist=False),
        all(r.halt_known for r in reports),
        sum(r.time_ns for r in reports),
        last.by_sub,
        unknown=frozenset().union(*(r.unknown for r in reports)),
    )


# -- the slow-exit log (--slower-than) ------------------------------------------------------------


def is_slower(duration_ns: int, threshold_ns: int) -> bool:
    """The slow-exit log's rule, live (``bpf/kvmexit.bpf.c``, SLOW_NS) and offline alike: a pair
    is logged when it took strictly longer than the threshold."""
    return duration_ns > threshold_ns


class SlowExit(NamedTuple):
    """One paired exit slower than the threshold (:func:`is_slower`), as the kernel sent it (live)
    or the trace shows it (offline)."""

    #: Time of its kvm_exit in the source's clock (live: CLOCK_MONOTONIC ns; a trace: its timestamps).
    time_ns: int
    tgid: Optional[int]
    tid: int
    code: int
    detail: int
    duration_ns: int
    #: Of that, halted (kvm_vcpu_wakeup); None where halts are not traced.
    halt_ns: Optional[int]
    #: Guest PC at the exit; None where the source does not have it.
    pc: Optional[int]
    #: arm64: ESR_EL2 (``esr_whole`` False: only its EC is known); x86: the exit qualification
    #: (info1); None where unknown.
    esr: Optional[int]
    esr_whole: bool
    #: The sub-reason (reasons/subreasons.py), 0 = none seen.
    sub: int = 0
    thread: ThreadInfo = ThreadInfo()
    #: Unix time of the exit, where the source can tell.
    wall: Optional[float] = None
    #: The split of the duration (issue 11; live with --split, offline where the trace has the
    #: events so far), as the pair's row gets it: on CPU in user space, off CPU runnable, off CPU
    #: sleeping outside a halt. None where unknown (never 0 for unknown).
    vmm_ns: Optional[int] = None
    preempt_ns: Optional[int] = None
    blocked_ns: Optional[int] = None

    @property
    def kernel_ns(self) -> Optional[int]:
        """The host kernel's part: what the other parts leave (None unless they are all known)."""
        parts = (self.halt_ns, self.vmm_ns, self.preempt_ns, self.blocked_ns)
        if any(p is None for p in parts):
            return None
        return self.duration_ns - sum(parts)  # type: ignore[arg-type]

    @property
    def split_known(self) -> bool:
        """Whether the split was measured at all (some of its parts known)."""
        return not (self.vmm_ns is None and self.preempt_ns is None and self.blocked_ns is None)
