"""Fuzzing: no input crashes the reader, and no line is silently dropped.

Every line ends up as a kvm event, a known non-kvm line (other event, header, loss marker) or a
malformed line: ``lines == events + other_events + ignored + malformed``.
"""

from __future__ import annotations

import io
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmexit.errors import BadTrace
from kvmexit.sources.trace import read_stream

TRACES = Path(__file__).resolve().parent.parent / "data" / "traces"
SEED_LINES = []
for name in (
    "arm64-upstream.synthetic.trace",
    "x86-vmx.synthetic.perf",
    "arm64-openeuler-5.10.synthetic.trace",
    "x86-vmx.synthetic.trace-cmd",
    "arm64-upstream-lost.synthetic.trace",
):
    SEED_LINES += (TRACES / name).read_bytes().splitlines(keepends=True)


def mutate(line: bytes, pos: int, junk: bytes, how: int) -> bytes:
    pos = pos % (len(line) + 1)
    if how == 0:
        return line[:pos]  # truncated
    if how == 1:
        return line[:pos] + junk + line[pos:]
    if how == 2:
        return line[:pos] + junk + line[pos + len(junk) :]
    return junk


LINE = st.one_of(
    st.sampled_from(SEED_LINES),
    st.builds(
        mutate,
        st.sampled_from(SEED_LINES),
        st.integers(min_value=0, max_value=300),
        st.binary(max_size=12),
        st.integers(min_value=0, max_value=3),
    ),
    st.binary(max_size=80),
)


def check(data: bytes, fmt=None) -> None:
    n_lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)  # "\n"-lines
    try:
        r = read_stream(io.BytesIO(data), fmt=fmt)
    except BadTrace as e:
        assert "no KVM exit/entry events" in str(e)
        return
    h = r.health
    assert h.lines == n_lines
    assert h.lines == h.events + h.other_events + h.ignored + h.malformed
    st_ = r.snapshot.stats.values()
    assert all(s.pairs >= 0 and s.unfinished >= 0 and s.open >= 0 and s.total_ns >= 0 for s in st_)
    assert all(sum(s.hist) == s.pairs for s in st_)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE, max_size=40), st.sampled_from([None, "ftrace", "trace-cmd", "perf"]))
def test_no_crash_no_silent_drop(lines, fmt):
    data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
    check(data, fmt)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes(data):
    check(data)
