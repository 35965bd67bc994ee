"""Fuzzing: no input crashes the reader, and no line is silently dropped.

Every line ends up as a kvm event, a known non-kvm line (other event, header, loss marker) or a
malformed line: ``lines == events + other_events + ignored + malformed``.

The hostile strategies (issue 10) splice into real and synthetic lines what once hung or crashed
the reader: whitespace runs (cubic regexes), digit runs (Python's int digit limit, the timestamp
scale table), lines longer than the reader's limit, NUL and invalid UTF-8. Time is not asserted
here (``bench/pathological_bench.py`` shows linear growth); the runs are kept short enough that a
super-linear grammar would be seen as a hang.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmexit.errors import BadTrace
from kvmexit.sources.trace import read_stream, reader

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
#: Real captures (arm64 KVM in the emulated host, x86 sched events): every tenth line.
for name in ("arm64-6.1-e2e.trace", "x86-6.18-sched.real.trace", "x86-6.18-sched.real.trace-cmd"):
    SEED_LINES += (TRACES / name).read_bytes().splitlines(keepends=True)[::10]


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


def check(data: bytes, fmt=None, max_line=None) -> None:
    n_lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)  # "\n"-lines
    try:
        if max_line is None:
            r = read_stream(io.BytesIO(data), fmt=fmt)
        else:
            r = read_stream(io.BytesIO(data), fmt=fmt, max_line=max_line)
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


# -- hostile runs spliced into real lines -------------------------------------------------------------

RUN = st.one_of(
    st.builds(
        lambda c, n: c * n, st.sampled_from([b" ", b"\t", b" \t", b"\r", b"\x0b", b"\x0c"]), st.integers(1, 3000)
    ),
    st.builds(lambda c, n: c * n, st.sampled_from([b"1", b"0", b"9", b"f"]), st.integers(15, 5000)),
    st.builds(
        lambda c, n: c * n,
        st.sampled_from([b"\0", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x80"]),
        st.integers(1, 500),
    ),
    st.builds(
        lambda c, n: c * n,
        st.sampled_from([b"-1 ", b"-1 [1] ", b": ", b"(1) ", b"CPU:1 ", b"a 1 ", b"1.", b"#", b"kvm:"]),
        st.integers(1, 600),
    ),
)


def splice(line: bytes, pos: int, run: bytes, replace: bool) -> bytes:
    body = line.rstrip(b"\n")
    pos = pos % (len(body) + 1)
    rest = body[pos + len(run) :] if replace else body[pos:]
    return body[:pos] + run + rest + b"\n"


HOSTILE_LINE = st.one_of(
    st.sampled_from(SEED_LINES),
    st.builds(splice, st.sampled_from(SEED_LINES), st.integers(0, 300), RUN, st.booleans()),
    RUN.map(lambda r: r + b"\n"),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(HOSTILE_LINE, min_size=1, max_size=30), st.sampled_from([None, "ftrace", "trace-cmd", "perf"]))
def test_hostile_runs_in_real_lines(lines, fmt):
    check(b"".join(lines), fmt)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    st.lists(HOSTILE_LINE, min_size=1, max_size=20),
    st.sampled_from([None, "ftrace", "perf"]),
    st.integers(min_value=1, max_value=400),
    st.booleans(),
)
def test_lines_over_the_limit_are_counted(lines, fmt, max_line, final_newline):
    """With a small line limit many lines are over it: each is one malformed line, never lost."""
    data = b"".join(lines)
    if not final_newline:
        data = data.rstrip(b"\n")
    check(data, fmt, max_line=max_line)


# -- the reader's fast path reads every line as its grammar does ---------------------------------------

#: A timestamp in place of a line's: its seconds (``None``: the line's own, so that the reader's
#: prefix cache has it) or others, fraction digits and what may follow them, around the grammar's
#: bounds (1-20 digits of seconds, at most 9 of fraction, one optional dot).
STAMP = st.tuples(
    st.one_of(st.none(), st.none(), st.text("0123456789", max_size=22).map(str.encode)),
    st.text("0123456789", max_size=24).map(str.encode),
    st.sampled_from([b"", b"", b"", b"x", b" ", b"\t", b"_1", b"+1", b"\xd9\xa1"]),
)


def restamp(line: bytes, dot: bytes, stamp: tuple) -> bytes:
    """``line`` with the word before its first ``": "`` (its timestamp) replaced by ``stamp``'s
    seconds, ``dot`` and the rest of ``stamp``."""
    sec, frac, tail = stamp
    prefix, sep, rest = line.partition(b": ")
    head, space, old = prefix.rpartition(b" ")
    if not (sep and space):
        return line
    if sec is None:
        sec = old.partition(b".")[0]
    return head + space + sec + dot + frac + tail + sep + rest


def read_or_error(data: bytes, fmt):
    try:
        r = read_stream(io.BytesIO(data), fmt=fmt)
    except BadTrace as e:
        return str(e)
    return r.snapshot, r.health


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(SEED_LINES),
            st.sampled_from([b".", b"", b".."]),
            st.lists(STAMP, min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from([None, "ftrace", "trace-cmd", "perf"]),
)
def test_fast_path_reads_as_the_grammar(edits, fmt):
    """Lines whose prefix (thread, CPU, the timestamp's seconds) the reader has cached skip the
    grammar: each seed line is followed by copies with other timestamps (a fraction of another
    length, none, no dot, too many digits, junk after it...), and the whole trace must read the
    same as with the prefix cache off (every line through the grammar)."""
    lines = []
    for line, dot, stamps in edits:
        line = line.rstrip(b"\n") + b"\n"
        lines += [line] + [restamp(line, dot, stamp) for stamp in stamps]
    data = b"".join(lines)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader, "_HEADS_MAX", 0)
        assert reader._HEADS_MAX == 0
        through_grammar = read_or_error(data, fmt)
    assert read_or_error(data, fmt) == through_grammar
