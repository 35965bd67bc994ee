"""``record``'s ExecWatch: exec'd pids picked out of the trace as it is drained, whatever the
chunking of the reads (property tests; hostile input never raises, memory stays bounded)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kvmexit.commands.record import ExecWatch

EXEC = b"          bash-%d     [001] d..2.   100.000000: sched_process_exec: filename=/usr/bin/qemu pid=%d old_pid=%d\n"
OTHER = b"     CPU 0/KVM-140     [000] d..2.   100.000001: kvm_exit: TRAP: HSR_EC: 0x0016 (HVC64)\n"


def feed_in_chunks(data: bytes, cuts: list) -> list:
    w = ExecWatch()
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        w.feed(data[start:cut])
        start = cut
    return w.take()


@given(st.lists(st.integers(1, 4194304), max_size=20), st.lists(st.integers(0, 10**6), max_size=30))
def test_every_exec_is_found_whatever_the_reads(pids, cuts):
    data = b"".join(EXEC % (p, p, p) + OTHER for p in pids)
    assert feed_in_chunks(data, cuts) == pids


@given(st.lists(st.binary(max_size=3000), max_size=20))
def test_hostile_input_never_raises_and_keeps_little(chunks):
    w = ExecWatch()
    for c in chunks:
        w.feed(c)
        assert len(w._tail) <= 4096
    assert all(isinstance(p, int) for p in w.take())


def test_a_line_without_its_end_is_not_read_until_it_ends():
    w = ExecWatch()
    line = EXEC % (7, 7, 7)
    w.feed(line[:-1])
    assert w.take() == []
    w.feed(b"\n")
    assert w.take() == [7]
