"""Comparing two runs: rows matched on what survives a re-run, changes, and the noise bound.

Thread ids and process ids change on every run; a VM's name, a vCPU's index and an exit reason do
not. So rows are keyed by ``(vm, vcpu, reason)`` (or a coarser grouping); a thread without a vCPU
index is keyed by its name instead. Runs of different length are compared by rate: exits per
second, and exit time per second (total exit->entry time divided by the time the counts cover).

Whether a change is more than noise is judged by two tests per row, on what kvmexit measures:

- **rate**: the exit counts as Poisson counts over each run's duration (``per_second=False``:
  over equal exposure, for runs that did the same work). Given ``n = nA + nB``
  exits in all, equal rates put ``nB ~ Binomial(n, tB / (tA + tB))``; the two-sided p-value is
  the exact binomial one (normal approximation above 10^4 exits). This is the conditional test
  for comparing two Poisson rates. Bursty exits vary more than Poisson counts do, so a rate
  change called significant here can still be a burst; the latency test does not depend on it.
- **latency**: the histogram buckets (4 per power of two) of both runs as ordinal samples, compared with the
  Mann-Whitney U test with tie correction (normal approximation; at least ``MIN_PAIRS`` timed
  exits on each side). Changes inside one bucket are not seen: the test is conservative.

All p-values of one comparison are corrected together with Holm's step-down method at ``alpha``
(default 0.05), so a table of many rows does not show changes by chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .model import ExitStats, Row, merge_all, percentile

__all__ = [
    "DIFF_GROUPINGS",
    "INPUT_GROUPINGS",
    "MIN_PAIRS",
    "Change",
    "Diff",
    "DiffRow",
    "RunSide",
    "compare",
    "diff_key",
    "holm",
    "latency_p_value",
    "rate_p_value",
]

#: Diff groupings: the identity fields each keeps (all stable across runs).
DIFF_GROUPINGS: Dict[str, Tuple[str, ...]] = {
    "thread": ("vm", "vcpu", "reason"),
    "vcpu": ("vm", "vcpu"),
    "vm": ("vm",),
    "reason": ("reason",),
}

#: For an input already grouped (a saved report), the diff groupings its rows can still give.
INPUT_GROUPINGS: Dict[str, Tuple[str, ...]] = {
    "thread": ("thread", "vcpu", "vm", "reason"),
    "vcpu": ("vcpu", "vm"),
    "vm": ("vm",),
    "reason": ("reason",),
}

#: Fewer timed exits than this on a side: no latency test (the normal approximation needs more).
MIN_PAIRS = 8
#: Above this many exits the binomial test uses its normal approximation.
_EXACT_LIMIT = 10000

Key = Tuple[object, ...]


def diff_key(row: Row, group_by: str) -> Key:
    """The identity of a row that survives a re-run (a thread without a vCPU index: its name)."""
    fields = DIFF_GROUPINGS[group_by]
    out: List[object] = []
    for f in fields:
        value = getattr(row, f)
        if f == "vcpu" and value is None:
            value = row.comm or None
        out.append(value)
    return tuple(out)


@dataclass(frozen=True)
class RunSide:
    """One run, reduced to what a comparison needs."""

    label: str
    rows: Sequence[Row]
    seconds: Optional[float]
    totals: ExitStats
    source: Dict[str, object]


@dataclass(frozen=True)
class Change:
    """One figure on both sides; ``rel`` is None when A is 0 or either side is missing."""

    a: Optional[float]
    b: Optional[float]

    @property
    def abs(self) -> Optional[float]:
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def rel(self) -> Optional[float]:
        if self.a is None or self.b is None or self.a == 0:
            return None
        return (self.b - self.a) / self.a


@dataclass
class DiffRow:
    key: Key
    a: ExitStats
    b: ExitStats
    in_a: bool
    in_b: bool
    seconds_a: Optional[float]
    seconds_b: Optional[float]
    #: Compare per second of each run (False: counts as they are, for runs that did the same work).
    per_second: bool = True
    rate_p: Optional[float] = None
    latency_p: Optional[float] = None
    rate_changed: bool = False
    latency_changed: bool = False

    @property
    def status(self) -> str:
        return "both" if self.in_a and self.in_b else "new" if self.in_b else "gone"

    @property
    def exits(self) -> Change:
        return Change(self.a.exits, self.b.exits)

    @property
    def exits_per_s(self) -> Change:
        return Change(
            self.a.exits / self.seconds_a if self.seconds_a else None,
            self.b.exits / self.seconds_b if self.seconds_b else None,
        )

    @property
    def avg_ns(self) -> Change:
        return Change(
            self.a.total_ns / self.a.pairs if self.a.pairs else None,
            self.b.total_ns / self.b.pairs if self.b.pairs else None,
        )

    def p(self, q: float) -> Change:
        pa, pb = percentile(self.a, q), percentile(self.b, q)
        return Change(None if pa is None else float(pa), None if pb is None else float(pb))

    @property
    def total_ns(self) -> Change:
        return Change(self.a.total_ns, self.b.total_ns)

    @property
    def time_per_s(self) -> Change:
        """Exit time per second of run (ns/s): what the sort uses when both durations are known."""
        return Change(
            self.a.total_ns / self.seconds_a if self.seconds_a else None,
            self.b.total_ns / self.seconds_b if self.seconds_b else None,
        )

    @property
    def by_rate(self) -> bool:
        return bool(self.per_second and self.seconds_a and self.seconds_b)

    @property
    def time_change(self) -> Change:
        """Exit time per second when comparing rates, else total exit time."""
        return self.time_per_s if self.by_rate else self.total_ns

    @property
    def verdict(self) -> str:
        count = "rate" if self.per_second else "count"
        changed = [w for w, c in ((count, self.rate_changed), ("latency", self.latency_changed)) if c]
        tested = self.rate_p is not None or self.latency_p is not None
        text = "+".join(changed) if changed else ("within noise" if tested else "untested")
        return text if self.status == "both" else "%s (%s)" % (self.status, text)


@dataclass
class Diff:
    a: RunSide
    b: RunSide
    group_by: str
    rows: List[DiffRow]
    total: DiffRow
    alpha: float
    per_second: bool = True


def rate_p_value(n_a: int, t_a: float, n_b: int, t_b: float) -> float:
    """Two-sided p-value of equal Poisson rates, given counts over durations (conditional test)."""
    n = n_a + n_b
    if n == 0:
        return 1.0
    p0 = t_b / (t_a + t_b)
    if n > _EXACT_LIMIT:
        sd = math.sqrt(n * p0 * (1 - p0))
        z = (abs(n_b - n * p0) - 0.5) / sd if sd > 0 else 0.0
        return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))
    log_p0, log_q0 = math.log(p0), math.log1p(-p0)
    base = math.lgamma(n + 1)

    def log_pmf(k: int) -> float:
        return base - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p0 + (n - k) * log_q0

    observed = log_pmf(n_b)
    limit = observed + 1e-7  # pmf ties within rounding count as "as extreme"
    total = sum(math.exp(lp) for lp in (log_pmf(k) for k in range(n + 1)) if lp <= limit)
    return min(1.0, total)


def latency_p_value(hist_a: Sequence[int], hist_b: Sequence[int]) -> Optional[float]:
    """Two-sided Mann-Whitney U p-value of two bucketed samples (ties: whole buckets)."""
    n1, n2 = sum(hist_a), sum(hist_b)
    if n1 < MIN_PAIRS or n2 < MIN_PAIRS:
        return None
    n = n1 + n2
    rank_sum = 0.0
    ties = 0.0
    below = 0
    for a, b in zip(hist_a, hist_b):
        t = a + b
        if not t:
            continue
        rank_sum += a * (below + (t + 1) / 2.0)
        ties += t * t * t - t
        below += t
    u = rank_sum - n1 * (n1 + 1) / 2.0
    mean = n1 * n2 / 2.0
    var = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return 1.0  # every timed exit in one bucket: nothing to tell apart
    z = max(abs(u - mean) - 0.5, 0.0) / math.sqrt(var)
    return min(1.0, math.erfc(z / math.sqrt(2)))


def holm(p_values: Sequence[Optional[float]], alpha: float) -> List[bool]:
    """Holm's step-down correction: which of the tests (None: not run) reject at family ``alpha``."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    out = [False] * len(p_values)
    m = len(tested)
    for rank, (p, i) in enumerate(tested):
        if p > alpha / (m - rank):
            break
        out[i] = True
    return out


def _grouped(rows: Iterable[Row], group_by: str) -> Dict[Key, ExitStats]:
    parts: Dict[Key, List[ExitStats]] = {}
    for r in rows:
        parts.setdefault(diff_key(r, group_by), []).append(r.stats)
    return {k: merge_all(v) for k, v in parts.items()}


def _test(row: DiffRow) -> None:
    if row.by_rate:
        row.rate_p = rate_p_value(row.a.exits, row.seconds_a or 0.0, row.b.exits, row.seconds_b or 0.0)
    elif not row.per_second:
        row.rate_p = rate_p_value(row.a.exits, 1.0, row.b.exits, 1.0)  # the same work on both sides
    row.latency_p = latency_p_value(row.a.hist, row.b.hist)


def compare(a: RunSide, b: RunSide, group_by: str = "thread", alpha: float = 0.05, per_second: bool = True) -> Diff:
    """Match the rows of two runs, test each change, sort by the change in exit time.

    ``per_second=False`` compares counts and total times as they are, for runs that did the same
    work (a fixed workload) rather than ran the same time: their rates differ with speed alone.
    """
    if group_by not in DIFF_GROUPINGS:
        raise ValueError("unknown grouping %r" % group_by)
    ga, gb = _grouped(a.rows, group_by), _grouped(b.rows, group_by)
    empty = ExitStats()
    rows = [
        DiffRow(k, ga.get(k, empty), gb.get(k, empty), k in ga, k in gb, a.seconds, b.seconds, per_second)
        for k in set(ga) | set(gb)
    ]
    all_a, all_b = merge_all(list(ga.values()) or [empty]), merge_all(list(gb.values()) or [empty])
    total = DiffRow((), all_a, all_b, True, True, a.seconds, b.seconds, per_second)
    for row in [*rows, total]:
        _test(row)
    family = [*rows, total]
    verdicts = holm([p for r in family for p in (r.rate_p, r.latency_p)], alpha)
    for i, r in enumerate(family):
        r.rate_changed, r.latency_changed = verdicts[2 * i], verdicts[2 * i + 1]

    def order(r: DiffRow) -> tuple:
        change = r.time_change.abs or 0.0
        return (-abs(change), tuple("" if v is None else str(v) for v in r.key))

    rows.sort(key=order)
    return Diff(a, b, group_by, rows, total, alpha, per_second)
