"""Percentiles from the histogram against the exact ones, on the shipped example's real samples."""

from __future__ import annotations

import gzip
import math
import re
from collections import defaultdict
from pathlib import Path

from kvmexit.model import PERCENTILE_BOUND, percentile
from kvmexit.sources.trace import read_trace
from kvmexit.sources.trace.decode import Decoder

EXAMPLE = Path(__file__).resolve().parent.parent / "src" / "kvmexit" / "data" / "example-arm64.trace.gz"
_LINE = re.compile(rb"-(\d+)\s+\[\d+\]\s+\S+\s+(\d+)\.(\d+): (kvm_exit|kvm_entry): (.*)$")


def exact_samples(layout: str) -> dict:
    """(tid, code, detail) -> every exit->entry time in the file, paired independently."""
    decoder = Decoder(layout)
    open_exit: dict = {}
    samples: dict = defaultdict(list)
    with gzip.open(EXAMPLE, "rb") as f:
        for line in f:
            m = _LINE.search(line.rstrip(b"\n"))
            if m is None:
                continue
            tid, sec, frac, event, payload = m.groups()
            ts = int(sec) * 10**9 + int(frac) * 10 ** (9 - len(frac))
            if event == b"kvm_exit":
                open_exit[int(tid)] = (ts, decoder.exit(payload))
            elif int(tid) in open_exit:
                t0, (code, detail) = open_exit.pop(int(tid))
                samples[(int(tid), code, detail)].append(ts - t0)
    return samples


def test_percentiles_of_the_shipped_example_are_within_the_stated_bound():
    result = read_trace(str(EXAMPLE))
    samples = exact_samples(result.info.layout)
    checked = 0
    worst = 0.0
    for key, st in result.snapshot.stats.items():
        values = sorted(samples.get((key.tid, key.code, key.detail), []))
        assert len(values) == st.pairs and sum(values) == st.total_ns  # the same pairs
        for q in (50, 90, 99):
            if not values:
                assert percentile(st, q) is None
                continue
            exact = values[max(1, math.ceil(len(values) * q / 100.0)) - 1]
            error = abs(percentile(st, q) - exact) / exact
            assert error <= PERCENTILE_BOUND, (key, q, percentile(st, q), exact)
            worst = max(worst, error)
            checked += 1
    assert checked >= 30
    assert worst > 0  # estimates, not exact values: the check can fail
