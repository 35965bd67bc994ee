"""Prometheus metrics: a ``prometheus_client`` collector over cumulative snapshots.

Nothing here keeps state between scrapes: every scrape takes a snapshot of the kernel's
cumulative maps (nothing is cleared, so nothing is lost between scrapes) and turns it into metric
families through the model's report, grouped by the labels below.

Imported only by ``kvmexit exporter`` after checking that ``prometheus_client`` is installed.

Label cardinality: one label set per (vm, vcpu, reason) that has exited, so at most
VMs x vCPUs x reasons; a restarted VM of the same name reuses its series. ``per_thread`` adds
``tgid`` and ``tid`` (one label set per thread, which grows with thread churn: off by default).
``sub_reasons`` adds ``sub_reason`` (``kvmexit exporter --sub``: one label set per sub-reason
seen, off by default): a few per reason for WFx, HVC and SYS64 (the functions and registers a
guest uses, tens), but one per MMIO address a guest touches outside its memory (one per device
register: hundreds on a busy VM), so up to VMs x vCPUs x (reasons + sub-reasons seen).

Guest residency and the split of the exit time (issue 11) are exported where the source measured
them (``kvmexit exporter --guest`` / ``--split``; a trace with their events), and absent where it
did not, never 0: ``kvmexit_guest_seconds_total`` and ``kvmexit_exit_part_seconds_total`` with a
``part`` label (kernel, vmm, halt, preempt, blocked) whose values add up to
``kvmexit_exit_seconds_total`` of the same labels. One metric with a label rather than five
metrics: the parts are one quantity cut one way, so ``sum without (part)`` is meaningful (it is
the exit time), and a query, graph or alert over the parts needs no list of metric names.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from ..model import (
    HIST_SLOTS,
    SPLIT_FIELDS,
    ExitStats,
    Row,
    Snapshot,
    bucket_bounds,
    build_report,
    kernel_ns,
    merge_all,
)

__all__ = [
    "LABELS",
    "THREAD_LABELS",
    "SUB_LABELS",
    "PARTS",
    "ExitCollector",
    "bucket_edges",
    "known_parts",
    "row_labels",
]

#: Labels of every per-exit metric.
LABELS: Tuple[str, ...] = ("vm", "vcpu", "reason")
#: Added with ``per_thread``.
THREAD_LABELS: Tuple[str, ...] = ("tgid", "tid")
#: Added with ``sub_reasons`` (``-`` for the exits of a reason without one).
SUB_LABELS: Tuple[str, ...] = ("sub_reason",)

_NS = 1e9

#: The ``part`` label's values of kvmexit_exit_part_seconds_total, each with its statistics field
#: (the kernel's part is what the others leave: :func:`kvmexit.model.kernel_ns`), as in the
#: report's KERN%, VMM%, HALT%, PREEMPT% and BLOCKED% columns and the JSON fields ``*_ns``.
PARTS: Tuple[Tuple[str, str], ...] = (
    ("kernel", "kernel_ns"),
    ("vmm", "vmm_ns"),
    ("halt", "halt_ns"),
    ("preempt", "preempt_ns"),
    ("blocked", "blocked_ns"),
)


def known_parts(snap: Snapshot) -> Tuple[Tuple[str, str], ...]:
    """The parts of the exit time this snapshot measured (none unless the split was traced): halt
    where halts are traced, the kernel's only when every other part is known."""
    measured = [f for f in SPLIT_FIELDS if f not in snap.unknown]
    if not measured:
        return ()
    every = snap.halt_known and len(measured) == len(SPLIT_FIELDS)
    known = set(measured) | ({"halt_ns"} if snap.halt_known else set()) | ({"kernel_ns"} if every else set())
    return tuple(p for p in PARTS if p[1] in known)


def bucket_edges() -> List[Tuple[int, float]]:
    """(last kernel slot, upper bound in seconds) of each Prometheus bucket, from the model's
    bucket function: the kernel's own buckets, slots sharing an upper bound merged (``le`` must
    grow), the last one ``+Inf`` (the kernel's last slot also holds everything longer)."""
    edges: List[Tuple[int, float]] = []
    last_ns: Optional[int] = None
    for slot in range(HIST_SLOTS - 1):
        upper_ns = bucket_bounds(slot)[1]
        if edges and upper_ns == last_ns:
            edges[-1] = (slot, edges[-1][1])
        else:
            edges.append((slot, upper_ns / _NS))
        last_ns = upper_ns
    edges.append((HIST_SLOTS - 1, math.inf))
    return edges


def row_labels(row: Row, per_thread: bool = False, sub_reasons: bool = False) -> Tuple[str, ...]:
    """A row's label values. A VM without a name is ``tgid-N``; a thread that is no vCPU
    (no ``CPU n/KVM`` name) has an empty ``vcpu``."""
    values: Tuple[str, ...] = (
        row.vm if row.vm is not None else "tgid-%d" % (row.tgid or 0),
        "" if row.vcpu is None else str(row.vcpu),
        row.reason or "",
    )
    if per_thread:
        values += (str(row.tgid), str(row.tid))
    if sub_reasons:
        values += (row.sub or "-",)
    return values


class ExitCollector:
    """A custom collector: ``snapshot()`` is called once per scrape."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        label: Callable[[str, int, int], str],
        per_thread: bool = False,
        lost_events: Callable[[], int] = lambda: 0,
        info: Optional[Dict[str, str]] = None,
        excluded: Callable[[], Dict[str, int]] = dict,
        sub_label: Optional[Callable[[str, int, int, int], str]] = None,
    ) -> None:
        """``sub_label`` (``reasons.subreasons.sub_label``): split the series by sub-reason."""
        self._snapshot = snapshot
        self._sub_label = sub_label
        self._label = label
        self.per_thread = per_thread
        self._lost_events = lost_events
        self._info = dict(info or {})
        self._excluded = excluded
        self._edges = bucket_edges()
        self._le = [floatToGoString(upper) for _, upper in self._edges]

    def describe(self) -> List[Metric]:
        return []  # families are only known at scrape time; prometheus_client then skips checks

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        split = self._sub_label is not None
        report = build_report(snap, self._label, group_by="thread", by_sub=split, sub_label=self._sub_label)
        names = LABELS + (THREAD_LABELS if self.per_thread else ()) + (SUB_LABELS if split else ())
        groups: Dict[Tuple[str, ...], List[ExitStats]] = {}
        for row in report.rows:
            groups.setdefault(row_labels(row, self.per_thread, split), []).append(row.stats)
        series = sorted((labels, merge_all(stats)) for labels, stats in groups.items())

        exits = CounterMetricFamily(
            "kvmexit_exits", "VM exits seen (kvm_exit), including those still waiting for their entry", labels=names
        )
        seconds = CounterMetricFamily(
            "kvmexit_exit_seconds", "Time from kvm_exit to the next kvm_entry of the same thread", labels=names
        )
        halted = CounterMetricFamily(
            "kvmexit_halted_seconds",
            "Of kvmexit_exit_seconds, time the vCPU was halted (kvm_vcpu_wakeup)",
            labels=names,
        )
        guest_known = "guest_ns" not in snap.unknown
        guest = CounterMetricFamily(
            "kvmexit_guest_seconds",
            "Time in the guest (kvm_entry to the next kvm_exit), charged to the reason of that exit",
            labels=names,
        )
        parts = known_parts(snap)
        part = CounterMetricFamily(
            "kvmexit_exit_part_seconds",
            "Of kvmexit_exit_seconds, by where it went (part: kernel, vmm, halt, preempt, blocked; "
            "parts not measured are absent); summed over part, the exit time",
            labels=(*names, "part"),
        )
        hist = HistogramMetricFamily(
            "kvmexit_exit_duration_seconds",
            "Exit durations (exits whose entry was seen), in the kernel's own buckets",
            labels=names,
        )
        for labels, st in series:
            exits.add_metric(labels, st.exits)
            seconds.add_metric(labels, st.total_ns / _NS)
            if snap.halt_known:
                halted.add_metric(labels, st.halt_ns / _NS)
            if guest_known:
                guest.add_metric(labels, st.guest_ns / _NS)
            for name, field in parts:
                ns = kernel_ns(st) if field == "kernel_ns" else getattr(st, field)
                part.add_metric((*labels, name), ns / _NS)
            hist.add_metric(labels, self._buckets(st.hist), st.total_ns / _NS)
        yield exits
        yield seconds
        if snap.halt_known:
            yield halted
        if guest_known:
            yield guest
        if parts:
            yield part
        yield hist
        yield from self._health(snap, report.totals)

    def _buckets(self, counts: Sequence[int]) -> List[Tuple[str, float]]:
        out: List[Tuple[str, float]] = []
        cumulative, slot = 0, 0
        for (last, _), le in zip(self._edges, self._le):
            while slot <= last:
                cumulative += counts[slot]
                slot += 1
            out.append((le, cumulative))
        return out

    def _health(self, snap: Snapshot, totals: ExitStats) -> Iterator[Metric]:
        h = snap.health
        yield CounterMetricFamily(
            "kvmexit_unpaired_entries",
            "kvm_entry events with no kvm_exit before them on their thread",
            value=h.unpaired_entries,
        )
        full = CounterMetricFamily(
            "kvmexit_map_full", "Exits not recorded because a kernel map was full", labels=("map",)
        )
        full.add_metric(("start",), h.start_map_full)
        full.add_metric(("stats",), h.stats_map_full)
        yield full
        yield CounterMetricFamily(
            "kvmexit_abandoned_exits", "Open exits of threads that died before their entry", value=h.abandoned
        )
        yield CounterMetricFamily(
            "kvmexit_unfinished_exits",
            "Exits followed by another exit before any entry (a missed kvm_entry)",
            value=totals.unfinished,
        )
        yield CounterMetricFamily(
            "kvmexit_lost_events", "Kernel notifications lost by the perf buffer (VM naming)", value=self._lost_events()
        )
        excluded = self._excluded()
        if excluded:  # --vm only
            left_out = CounterMetricFamily(
                "kvmexit_vm_filter_excluded_exits",
                "--vm: exits traced before their process's name was read, then left out (other: another VM; "
                "unnamed: ended before its name could be read)",
                labels=("why",),
            )
            for why, n in sorted(excluded.items()):
                left_out.add_metric((why,), n)
            yield left_out
        yield GaugeMetricFamily("kvmexit_open_exits", "Exits waiting for their entry now", value=totals.open)
        yield GaugeMetricFamily(
            "kvmexit_halt_traced",
            "1 when kvm_vcpu_wakeup is traced (halted seconds are known)",
            value=int(snap.halt_known),
        )
        info = GaugeMetricFamily("kvmexit_tracing_info", "What is traced", labels=sorted(self._info))
        info.add_metric([self._info[k] for k in sorted(self._info)], 1)
        yield info
