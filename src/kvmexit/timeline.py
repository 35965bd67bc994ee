"""Exits and exit latency over time: the data behind the heatmaps of the HTML report.

Two sources give it: a trace's timestamps (``TimeBins.timeline()`` in the trace source: timed
exits binned by when they started) and live or saved interval reports (each interval one
bin, with all the exits it counted). Both become one :class:`Timeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .model import HIST_SLOTS, Row

__all__ = ["Timeline", "from_intervals"]


@dataclass(frozen=True)
class Timeline:
    #: Start of each bin, seconds from the first.
    starts: Sequence[float]
    #: Width of each bin in seconds.
    widths: Sequence[float]
    #: Reason -> count per bin.
    exits: Dict[str, List[int]]
    #: Latency bucket (log2 slot) -> timed exits per bin.
    latency: Sequence[Sequence[int]]
    #: What ``exits`` counts: "timed exits" (pairs, from a trace) or "exits" (intervals).
    counts: str
    #: Where the time axis comes from, for the page.
    basis: str

    @property
    def bins(self) -> int:
        return len(self.starts)


def from_intervals(intervals: Sequence[Tuple[float, Sequence[Row]]]) -> Optional[Timeline]:
    """From interval reports: ``(seconds, rows)`` per interval, rows being that interval's deltas."""
    if not intervals:
        return None
    starts: List[float] = []
    widths: List[float] = []
    t = 0.0
    exits: Dict[str, List[int]] = {}
    latency = [[0] * len(intervals) for _ in range(HIST_SLOTS)]
    for i, (seconds, rows) in enumerate(intervals):
        starts.append(t)
        widths.append(seconds)
        t += seconds
        for r in rows:
            name = r.reason or "all"
            exits.setdefault(name, [0] * len(intervals))[i] += r.count
            for slot, n in enumerate(r.stats.hist):
                latency[slot][i] += n
    return Timeline(starts, widths, exits, latency, "exits", "the report's intervals")
