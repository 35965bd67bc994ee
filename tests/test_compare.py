"""Matching of rows across runs, the noise tests and Holm's correction."""

from __future__ import annotations

import math

import pytest

from kvmexit.compare import RunSide, compare, holm, latency_p_value, rate_p_value
from kvmexit.model import HIST_SLOTS, ExitStats, Row


def hist(**slots: int) -> tuple:
    h = [0] * HIST_SLOTS
    for k, v in slots.items():
        h[int(k[1:])] = v
    return tuple(h)


def row(tid, vm, vcpu, reason, exits, slot=10, comm="", tgid=1):
    ns = 1 << (slot - 1)
    st = ExitStats(pairs=exits, total_ns=exits * ns, min_ns=ns, max_ns=ns, hist=hist(**{"s%d" % slot: exits}))
    return Row(tgid, tid, comm or "CPU %s/KVM" % vcpu, vm, vcpu, reason, 0, 0, st)


def side(rows, seconds=1.0):
    from kvmexit.model import merge_all

    return RunSide("x", rows, seconds, merge_all([r.stats for r in rows]), {"arch": "arm64"})


def binomial_two_sided(k, n, p):
    """Reference: the exact two-sided binomial p-value, with math.comb-free exact fractions."""
    from fractions import Fraction

    pf = Fraction(p).limit_denominator(10**6)
    pmf = [Fraction(math.factorial(n), math.factorial(i) * math.factorial(n - i)) * pf**i * (1 - pf) ** (n - i)
           for i in range(n + 1)]  # fmt: skip
    return float(sum(x for x in pmf if x <= pmf[k]))


@pytest.mark.parametrize(
    "na,ta,nb,tb",
    [(0, 1, 10, 1), (5, 1, 5, 1), (10, 1, 30, 2), (3, 2, 17, 1), (40, 1, 22, 1), (1, 1, 0, 1)],
)
def test_rate_test_is_the_exact_conditional_binomial(na, ta, nb, tb):
    assert rate_p_value(na, ta, nb, tb) == pytest.approx(binomial_two_sided(nb, na + nb, tb / (ta + tb)), rel=1e-6)


def test_rate_test_compares_rates_not_counts():
    assert rate_p_value(100, 1.0, 200, 2.0) > 0.9  # the same rate over twice the time
    assert rate_p_value(100, 1.0, 200, 1.0) < 1e-6
    assert rate_p_value(0, 1.0, 0, 1.0) == 1.0
    # the normal approximation above 10^4 exits agrees in what it says
    assert rate_p_value(10000, 1.0, 10100, 1.0) > 0.4
    assert rate_p_value(10000, 1.0, 11000, 1.0) < 1e-9


def mann_whitney_reference(ha, hb):
    """Reference: U by pairwise comparison, variance with the tie correction, normal p."""
    a = [i for i, n in enumerate(ha) for _ in range(n)]
    b = [i for i, n in enumerate(hb) for _ in range(n)]
    u = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    n1, n2 = len(a), len(b)
    n = n1 + n2
    ties = sum((x + y) ** 3 - (x + y) for x, y in zip(ha, hb))
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    z = (abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(var)
    return math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize(
    "ha,hb",
    [
        (hist(s10=8), hist(s12=8)),
        (hist(s10=20, s11=5, s12=1), hist(s10=15, s11=9, s12=4)),
        (hist(s5=3, s10=9, s20=2), hist(s5=4, s10=8, s21=3)),
    ],
)
def test_latency_test_is_mann_whitney_with_ties(ha, hb):
    assert latency_p_value(ha, hb) == pytest.approx(mann_whitney_reference(ha, hb), rel=1e-9)


def test_latency_test_needs_enough_pairs_and_sees_no_change_in_one_bucket():
    assert latency_p_value(hist(s10=7), hist(s12=100)) is None
    assert latency_p_value(hist(s10=50), hist(s10=80)) == 1.0
    assert latency_p_value(hist(s10=50), hist(s14=50)) < 1e-10


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03, 0.005], 0.05) == [True, False, False, True]
    assert holm([0.01, None, 0.02], 0.05) == [True, False, True]  # 0.02 <= 0.05/1 after the first
    assert holm([], 0.05) == []


def test_rows_match_on_vm_vcpu_reason_not_thread_ids():
    a = side([row(101, "web", 0, "WFx", 100), row(102, "web", 1, "WFx", 100), row(103, "db", 0, "HVC64", 50)])
    b = side([row(201, "web", 0, "WFx", 100), row(202, "web", 1, "WFx", 300), row(204, "db", 1, "SYS64", 40)])
    d = compare(a, b)
    by_key = {r.key: r for r in d.rows}
    assert set(by_key) == {("web", 0, "WFx"), ("web", 1, "WFx"), ("db", 0, "HVC64"), ("db", 1, "SYS64")}
    assert by_key["web", 0, "WFx"].status == "both"
    assert by_key["web", 0, "WFx"].verdict == "within noise"
    assert by_key["web", 1, "WFx"].exits_per_s.rel == pytest.approx(2.0)
    assert by_key["web", 1, "WFx"].verdict == "rate"
    assert by_key["db", 0, "HVC64"].status == "gone"
    assert by_key["db", 1, "SYS64"].status == "new"
    # sorted by the absolute change in exit time per second: +200 x 512ns first
    assert d.rows[0].key == ("web", 1, "WFx")
    assert d.rows[0].time_change.abs == pytest.approx(200 * 512)
    assert d.total.exits.a == 250 and d.total.exits.b == 440


def test_runs_of_different_length_compare_by_rate():
    a = side([row(1, "vm", 0, "IRQ", 100)], seconds=1.0)
    b = side([row(2, "vm", 0, "IRQ", 300)], seconds=3.0)
    r = compare(a, b).rows[0]
    assert r.exits.rel == pytest.approx(2.0)
    assert r.exits_per_s.rel == pytest.approx(0.0)
    assert r.time_per_s.rel == pytest.approx(0.0)
    assert not r.rate_changed and r.verdict == "within noise"


def test_latency_change_found_and_rate_unchanged():
    a = side([row(1, "vm", 0, "DABT_LOW", 200, slot=10)])
    b = side([row(2, "vm", 0, "DABT_LOW", 200, slot=13)])
    r = compare(a, b).rows[0]
    assert r.verdict == "latency"
    assert r.avg_ns.rel == pytest.approx(7.0)


def test_coarser_groupings_and_threads_without_vcpu_index():
    a = side([row(1, "vm", 0, "IRQ", 10), row(2, "vm", 1, "IRQ", 10), row(3, "vm", None, "IRQ", 5, comm="io")])
    b = side([row(4, "vm", 0, "IRQ", 10), row(6, "vm", None, "IRQ", 5, comm="io")])
    keys = {r.key for r in compare(a, b).rows}
    assert ("vm", "io", "IRQ") in keys
    assert [r.key for r in compare(a, b, "vm").rows] == [("vm",)]
    assert compare(a, b, "reason").rows[0].exits.a == 25


def test_unknown_durations_compare_totals_without_a_rate_test():
    a = side([row(1, "vm", 0, "IRQ", 100)], seconds=None)
    b = side([row(2, "vm", 0, "IRQ", 300)], seconds=1.0)
    r = compare(a, b).rows[0]
    assert r.rate_p is None and r.exits_per_s.a is None
    assert r.time_change.abs == pytest.approx(200 * 512)
