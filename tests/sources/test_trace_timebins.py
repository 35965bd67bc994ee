"""Per-time-bin counts from a trace: exact totals, bounded memory, and no effect on the snapshot."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmexit.commands.report import EXAMPLE_NAMES, EXAMPLE_TRACE
from kvmexit.model import HIST_SLOTS, hist_slot
from kvmexit.reasons import label
from kvmexit.sources.trace import read_trace
from kvmexit.sources.trace.timebins import OTHER, TimeBins


def test_bins_hold_every_pair_of_the_trace_by_reason_and_bucket():
    bins = TimeBins()
    with_bins = read_trace(EXAMPLE_TRACE, names_path=EXAMPLE_NAMES, time_bins=bins)
    plain = read_trace(EXAMPLE_TRACE, names_path=EXAMPLE_NAMES)
    assert dict(with_bins.snapshot.stats) == dict(plain.snapshot.stats)  # the bins change nothing else
    pairs = {}
    hist = [0] * HIST_SLOTS
    for key, s in plain.snapshot.stats.items():
        pairs[key.code, key.detail] = pairs.get((key.code, key.detail), 0) + s.pairs
        hist = [a + b for a, b in zip(hist, s.hist)]
    assert {k: sum(v) for k, v in bins.exits.items()} == {k: v for k, v in pairs.items() if v}
    assert [sum(row) for row in bins.latency] == hist
    tl = bins.timeline(plain.snapshot.arch, label, max_bins=50)
    assert tl is not None and tl.bins <= 50
    assert sum(tl.exits["WFx"]) == 45 and sum(map(sum, tl.latency)) == 841
    assert abs(tl.starts[-1] + tl.widths[-1] - 0.146) < 0.05  # the trace's span


def reference(events, width, n):
    """Counts per bin computed directly with the final width."""
    origin = events[0][0]
    out = [0] * n
    for ts, *_ in events:
        out[max(ts - origin, 0) // width] += 1
    return out


@settings(max_examples=100, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=200),
    max_bins=st.sampled_from([2, 4, 10, 64]),
)
def test_coarsening_keeps_memory_bounded_and_counts_exact(gaps, max_bins):
    bins = TimeBins(max_bins=max_bins, width_ns=1000)
    ts, events = 10**12, []
    for g in gaps:
        ts += g
        events.append((ts, 2, g % 3, g % 5000))
    for e in events:
        bins.pair(*e)
    assert all(len(row) == max_bins for row in [*bins.exits.values(), *bins.latency])
    assert bins.used <= max_bins
    total = [sum(col) for col in zip(*bins.exits.values())]
    assert total == reference(events, bins.width_ns, max_bins)
    assert [sum(row) for row in bins.latency] == [
        sum(1 for e in events if hist_slot(e[3]) == s) for s in range(HIST_SLOTS)
    ]


def test_hostile_timestamps_and_reason_counts_stay_bounded():
    bins = TimeBins(max_bins=8, max_reasons=4)
    bins.pair(10**6, 2, 1, 5)
    bins.pair(10**6 - 500, 2, 1, 5)  # before the first: bin 0
    bins.pair(10**40, 2, 1, 5)  # absurd: one long coarsening, still 8 bins
    for code in range(20):
        bins.pair(10**6 + random.randrange(10**9), code, 0, 7)
    assert len(bins.exits) == 5 and OTHER in bins.exits
    assert sum(map(sum, bins.exits.values())) == 23
    assert all(len(r) == 8 for r in bins.exits.values())
