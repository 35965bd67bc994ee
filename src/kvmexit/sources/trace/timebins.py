"""Per-time-bin counts from a trace, for heatmaps: an optional output of the reader.

Memory is bounded whatever the trace's length: at most ``max_bins`` bins; when the trace runs past
the last one, the bin width doubles and neighbouring bins merge (so a 10-minute trace ends with
bins about 10 minutes / ``max_bins`` wide). Reasons beyond ``max_reasons`` share one row.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from ...model import HIST_SLOTS, hist_slot
from ...timeline import Timeline

__all__ = ["OTHER", "TimeBins"]

#: The reason key of exits beyond ``max_reasons`` distinct ones.
OTHER: Tuple[int, int] = (-1, -1)


class TimeBins:
    """Timed exits (pairs) per reason and per latency bucket, binned by the exit's timestamp."""

    def __init__(self, max_bins: int = 240, width_ns: int = 1_000_000, max_reasons: int = 256) -> None:
        if max_bins < 2 or max_bins % 2:
            raise ValueError("max_bins must be even and at least 2")
        self.max_bins = max_bins
        self.width_ns = width_ns
        self.max_reasons = max_reasons
        self.origin: Optional[int] = None
        #: (code, detail) -> pairs per bin.
        self.exits: Dict[Tuple[int, int], List[int]] = {}
        #: latency bucket -> pairs per bin.
        self.latency: List[List[int]] = [[0] * max_bins for _ in range(HIST_SLOTS)]
        #: Highest bin used so far (-1: none).
        self.last = -1

    def pair(self, exit_ns: int, code: int, detail: int, duration_ns: int) -> None:
        """One exit->entry pair whose exit was at ``exit_ns`` (trace clock)."""
        if self.origin is None:
            self.origin = exit_ns
        offset = exit_ns - self.origin
        i = offset // self.width_ns if offset > 0 else 0
        while i >= self.max_bins:
            self._coarsen()
            i = offset // self.width_ns
        if i > self.last:
            self.last = i
        key = (code, detail)
        row = self.exits.get(key)
        if row is None:
            if len(self.exits) >= self.max_reasons:
                key = OTHER
                row = self.exits.get(key)
            if row is None:
                row = self.exits[key] = [0] * self.max_bins
        row[i] += 1
        self.latency[hist_slot(duration_ns)][i] += 1

    def _coarsen(self) -> None:
        half = self.max_bins // 2
        for row in [*self.exits.values(), *self.latency]:
            row[:half] = [row[2 * j] + row[2 * j + 1] for j in range(half)]
            row[half:] = [0] * half
        self.width_ns *= 2
        self.last //= 2

    @property
    def used(self) -> int:
        """Number of bins from the first pair to the last."""
        return self.last + 1

    def timeline(self, arch: str, label: Callable[[str, int, int], str], max_bins: int = 80) -> Optional[Timeline]:
        """The bins used, at most ``max_bins`` (neighbours merged), with reasons named; None when
        no pair was seen."""
        n = self.used
        if n <= 0:
            return None
        k = -(-n // max_bins)  # bins merged into one
        width = self.width_ns * k / 1e9

        def merged(row: List[int]) -> List[int]:
            return [sum(row[i : i + k]) for i in range(0, n, k)]

        exits: Dict[str, List[int]] = {}
        for (code, detail), row in self.exits.items():
            name = "other" if (code, detail) == OTHER else label(arch, code, detail)
            have = exits.get(name)
            exits[name] = merged(row) if have is None else [a + b for a, b in zip(have, merged(row))]
        m = -(-n // k)
        return Timeline(
            starts=[i * width for i in range(m)],
            widths=[width] * m,
            exits=exits,
            latency=[merged(row) for row in self.latency],
            counts="timed exits",
            basis="the trace's timestamps (bins of %g ms, by when each exit started)" % (width * 1e3),
        )
