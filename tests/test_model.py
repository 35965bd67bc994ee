from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmexit.model import (
    HIST_SLOTS,
    PERCENTILE_BOUND,
    ExitKey,
    ExitStats,
    Health,
    Snapshot,
    ThreadInfo,
    bucket_bounds,
    build_report,
    delta,
    hist_slot,
    percentile,
)
from kvmexit.reasons import label


def hist(**slots: int) -> tuple:
    h = [0] * HIST_SLOTS
    for k, v in slots.items():
        h[int(k[1:])] = v
    return tuple(h)


def of(*samples: int) -> tuple:
    """The histogram of these pair times."""
    h = [0] * HIST_SLOTS
    for v in samples:
        h[hist_slot(v)] += 1
    return tuple(h)


def stats(pairs=0, total=0, lo=None, hi=None, h=None, **kw) -> ExitStats:
    return ExitStats(pairs=pairs, total_ns=total, min_ns=lo, max_ns=hi, hist=h or (0,) * HIST_SLOTS, **kw)


@pytest.mark.parametrize("v", [0, 1, 2, 3, 4, 5, 7, 8, 1000, 1023, 1024, 2**32 - 1, 2**32, 10**9, 2**38, 2**60])
def test_hist_slot_holds_the_value_in_a_bucket_a_quarter_as_wide(v):
    slot = hist_slot(v)
    lo, hi = bucket_bounds(slot)
    if slot == HIST_SLOTS - 1:
        assert v >= lo
        return
    assert lo <= v <= hi
    assert hi - lo + 1 <= max(1, lo * PERCENTILE_BOUND)  # the stated bound: 25% of the bucket's floor


def test_bucket_bounds_are_contiguous_and_log_linear():
    assert [bucket_bounds(s) for s in range(6)] == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    assert bucket_bounds(8) == (8, 9)
    assert bucket_bounds(hist_slot(1024)) == (1024, 1279)
    for slot in range(1, HIST_SLOTS):
        assert bucket_bounds(slot)[0] == bucket_bounds(slot - 1)[1] + 1
        assert hist_slot(bucket_bounds(slot)[0]) == slot


def test_percentile_interpolates_inside_the_bucket_and_clamps_to_max():
    # 100 pairs in [1024, 1279]; 1 far above. The median is placed halfway into the bucket.
    st = stats(pairs=101, total=1, lo=1024, hi=1_500_000, h=of(*[1024] * 100, 1_500_000))
    assert percentile(st, 50) == 1024 + int(50.5 * 256 / 100)
    assert 1024 <= percentile(st, 99) <= 1279
    assert percentile(st, 100) == 1_500_000  # clamped to the max, not the bucket's end
    assert bucket_bounds(hist_slot(1_500_000))[1] > 1_500_000


def test_percentile_clamped_to_min_and_none_without_pairs():
    st = stats(pairs=1, total=1500, lo=1500, hi=1500, h=of(1500))
    assert percentile(st, 99) == 1500
    assert percentile(ExitStats(open=3), 99) is None


@given(st.lists(st.integers(min_value=0, max_value=2**38), min_size=1, max_size=300), st.sampled_from([50, 90, 99]))
@settings(max_examples=300)
def test_percentile_is_within_the_stated_bound_of_the_exact_one(samples, q):
    h = [0] * HIST_SLOTS
    for v in samples:
        h[hist_slot(v)] += 1
    s = stats(pairs=len(samples), total=sum(samples), lo=min(samples), hi=max(samples), h=tuple(h))
    exact = sorted(samples)[max(1, math.ceil(len(samples) * q / 100.0)) - 1]
    assert abs(percentile(s, q) - exact) <= exact * PERCENTILE_BOUND


def test_stddev_is_exact_from_the_128_bit_sum_of_squares():
    samples = [3 * 10**9, 5 * 10**9, 7 * 10**9, 11]  # squares overflow 64 bits
    sq = sum(v * v for v in samples)
    s = ExitStats(pairs=4, total_ns=sum(samples), sumsq=(sq & (2**64 - 1), sq >> 64))
    assert s.stddev_ns == pytest.approx(statistics.pstdev(samples), rel=1e-12)
    assert ExitStats().stddev_ns is None


def test_exits_account_for_every_state():
    st = ExitStats(pairs=5, unfinished=2, open=1)
    assert st.exits == 8


def test_merge_sums_and_keeps_extremes():
    a = stats(pairs=2, total=30, lo=10, hi=20, h=hist(s3=1, s4=1))
    b = stats(pairs=1, total=5, lo=5, hi=5, h=hist(s2=1), open=1)
    m = a.merge(b)
    assert (m.pairs, m.total_ns, m.min_ns, m.max_ns, m.open) == (3, 35, 5, 20, 1)
    assert sum(m.hist) == 3
    assert stats().merge(a).min_ns == 10


K1 = ExitKey(100, 101, 2, 0x01)  # WFx
K2 = ExitKey(100, 101, 0, 0)  # IRQ
K3 = ExitKey(100, 102, 2, 0x16)  # HVC64
K4 = ExitKey(200, 201, 2, 0x01)  # WFx, another VM


def snapshot(entries, health=None, t=0) -> Snapshot:
    threads = {
        101: ThreadInfo("CPU 0/KVM", "vm-a", 0),
        102: ThreadInfo("CPU 1/KVM", "vm-a", 1),
        201: ThreadInfo("CPU 0/KVM", "vm-b", 0),
    }
    return Snapshot("arm64", dict(entries), health or Health(), threads, t)


def test_delta_subtracts_counters_and_keeps_open_as_gauge():
    prev = snapshot({K1: stats(pairs=10, total=100, lo=5, hi=20, h=hist(s3=10), open=1)}, Health(1, 0, 0, 0), t=5)
    cur = snapshot(
        {K1: stats(pairs=15, total=180, lo=4, hi=30, h=hist(s3=12, s4=3), open=0), K2: stats(pairs=2, total=8)},
        Health(3, 1, 0, 0),
        t=12,
    )
    d = delta(cur, prev)
    assert d.stats[K1].pairs == 5
    assert d.stats[K1].total_ns == 80
    assert d.stats[K1].open == -1  # the open exit of the previous interval was paired in this one
    assert d.stats[K1].exits == 4  # 5 pairs completed, one of which was counted as open before
    assert d.stats[K1].hist[3:5] == (2, 3)
    assert d.stats[K1].min_ns == 4  # min/max stay cumulative
    assert d.stats[K2].pairs == 2
    assert d.health == Health(2, 1, 0, 0)
    assert d.time_ns == 7


def test_interval_exits_add_up_to_the_total():
    s0 = snapshot({})
    s1 = snapshot({K1: stats(pairs=3, open=1)})
    s2 = snapshot({K1: stats(pairs=7, open=0, unfinished=1)})
    s3 = snapshot({K1: stats(pairs=9, open=1, unfinished=1)})
    parts = [delta(b, a).stats.get(K1, ExitStats()).exits for a, b in ((s0, s1), (s1, s2), (s2, s3))]
    assert sum(parts) == s3.stats[K1].exits == 11


def test_delta_drops_the_gauge_of_a_vanished_open_only_key():
    prev = snapshot({ExitKey(100, 101, 2, 0): ExitStats(open=1)})
    cur = snapshot({K1: stats(pairs=1)})
    d = delta(cur, prev)
    assert d.stats[ExitKey(100, 101, 2, 0)].exits == -1
    assert sum(s.exits for s in d.stats.values()) == 0  # one open exit became one pair


def test_unchanged_keys_leave_the_delta():
    s = snapshot({K1: stats(pairs=3)})
    assert delta(s, s).stats == {}


SNAP = snapshot(
    {
        K1: stats(pairs=10, total=1000, lo=50, hi=200, h=of(50, 100, 100, 100, 100, *[200] * 5), halt_ns=900),
        K2: stats(pairs=4, total=40, lo=5, hi=15, h=hist(s3=2, s4=2)),
        K3: stats(pairs=6, total=60, lo=8, hi=12, h=hist(s4=6), open=1),
        K4: stats(pairs=1, total=7, lo=7, hi=7, h=hist(s3=1), unfinished=2),
    }
)


def test_group_by_thread_keeps_one_row_per_reason():
    r = build_report(SNAP, label, "thread")
    assert [(x.tid, x.reason, x.count) for x in r.rows] == [
        (101, "WFx", 10),
        (102, "HVC64", 7),
        (101, "IRQ", 4),
        (201, "WFx", 3),
    ]
    assert r.rows[0].avg_ns == 100.0
    assert r.rows[0].halt_share == 0.9
    assert r.totals.exits == 24


def test_average_divides_by_pairs_only():
    r = build_report(SNAP, label, "thread")
    row = next(x for x in r.rows if x.tid == 201)
    assert row.count == 3
    assert row.avg_ns == 7.0


def test_group_by_vcpu_vm_and_reason():
    by_vcpu = build_report(SNAP, label, "vcpu", sort="tid")
    assert [(x.tid, x.vcpu, x.count) for x in by_vcpu.rows] == [(101, 0, 14), (102, 1, 7), (201, 0, 3)]
    by_vm = build_report(SNAP, label, "vm", sort="tid")
    assert [(x.vm, x.count, x.stats.min_ns, x.stats.max_ns) for x in by_vm.rows] == [
        ("vm-a", 21, 5, 200),
        ("vm-b", 3, 7, 7),
    ]
    by_reason = build_report(SNAP, label, "reason", sort="reason")
    assert [(x.reason, x.count, x.stats.pairs) for x in by_reason.rows] == [
        ("HVC64", 7, 6),
        ("IRQ", 4, 4),
        ("WFx", 13, 11),
    ]


@pytest.mark.parametrize(
    "sort,first",
    [("count", 101), ("total", 101), ("avg", 101), ("max", 101), ("tid", 101), ("p99", 101)],
)
def test_sort_keys(sort, first):
    assert build_report(SNAP, label, "thread", sort=sort).rows[0].tid == first


def test_sort_by_avg_orders_descending():
    rows = build_report(SNAP, label, "thread", sort="avg").rows
    avgs = [x.avg_ns for x in rows]
    assert avgs == sorted(avgs, reverse=True)


def test_top_and_filters():
    assert len(build_report(SNAP, label, "thread", top=2).rows) == 2
    only_wfx = build_report(SNAP, label, "thread", reasons=["wfx"])
    assert {x.reason for x in only_wfx.rows} == {"WFx"}
    assert only_wfx.totals.exits == 13
    only_b = build_report(SNAP, label, "thread", vms=["vm-b"])
    assert [x.tid for x in only_b.rows] == [201]


def test_unknown_grouping_or_sort_is_an_error():
    with pytest.raises(ValueError):
        build_report(SNAP, label, "cpu")
    with pytest.raises(ValueError):
        build_report(SNAP, label, "thread", sort="name")


def test_an_exited_threads_row_keeps_its_names_when_its_tid_is_reused():
    from kvmexit.model import ExitKey, ExitStats, Snapshot, ThreadInfo, build_report

    old, new = ExitKey(100, 101, 2, 0x16), ExitKey(200, 101, 2, 0x16)
    snap = Snapshot(
        "arm64",
        {old: ExitStats(pairs=1), new: ExitStats(pairs=2)},
        threads={101: ThreadInfo("CPU 0/KVM", "vm-b", 0)},
        retired_threads={(100, 101): ThreadInfo("CPU 3/KVM", "vm-a", 3)},
    )
    assert snap.thread_of(old).vm == "vm-a" and snap.thread_of(new).vm == "vm-b"
    rows = {(r.vm, r.vcpu): r.stats.pairs for r in build_report(snap, label, "thread").rows}
    assert rows == {("vm-a", 3): 1, ("vm-b", 0): 2}
