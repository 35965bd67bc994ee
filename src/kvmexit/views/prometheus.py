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
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from ..model import HIST_SLOTS, ExitStats, Row, Snapshot, bucket_bounds, build_report, merge_all

__all__ = ["LABELS", "THREAD_LABELS", "SUB_LABELS", "ExitCollector", "bucket_edges", "row_labels"]

#: Labels of every per-exit metric.
LABELS: Tuple[str, ...] = ("vm", "vcpu", "reason")
#: Added with ``per_thread``.
THREAD_LABELS: Tuple[str, ...] = ("tgid", "tid")
#: Added with ``sub_reasons`` (``-`` for the exits of a reason without one).
SUB_LABELS: Tuple[str, ...] = ("sub_reason",)

_NS = 1e9


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
            hist.add_metric(labels, self._buckets(st.hist), st.total_ns / _NS)
        yield exits
        yield seconds
        if snap.halt_known:
            yield halted
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
