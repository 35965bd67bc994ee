"""The entry cache of the default path (KVMEXIT_ENTRY_CACHE, kvmexit.bpf.c): a kvm_entry on the CPU
of its thread's kvm_exit pairs without a hash lookup and the pair is folded at the thread's next
exit, or by user space. Events are sent from threads pinned to given CPUs (BPF_PROG_TEST_RUN runs
the program on the caller's CPU, as the thread's own), so migrations between an exit and its
entry, another thread's exit in between, and pending pairs read by user space are all driven for
real, and every pair must come out exactly as without the cache."""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from typing import Callable, Dict, List, Optional

import pytest
from test_live_bpf import FORMATS, TRAP, Driver

from bpf_testrun import test_run_raw
from kvmexit.layouts import detect
from kvmexit.model import ExitStats, Snapshot, hist_slot
from kvmexit.reasons import ROW_REASONS
from kvmexit.sources.live import _ROWS_SIZE, _THREAD_TAIL, _VALUE, entry_cache, render_program

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_env")]

EC_HVC64, EC_SYS64 = 0x16, 0x18
CPUS = sorted(os.sched_getaffinity(0))


def need_two_cpus() -> None:
    if len(CPUS) < 2:
        pytest.skip("needs two CPUs this process may run on (has %d)" % len(CPUS))


@pytest.fixture
def d():
    need_two_cpus()
    drv = Driver(detect(FORMATS["arm64"]))
    yield drv
    drv.close()


def on(cpu: int, fn: Callable[[], None]) -> None:
    """Run fn in this thread on CPU number ``cpu`` of CPUS (as a migrated vCPU thread would)."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CPUS[cpu]})
    try:
        fn()
    finally:
        os.sched_setaffinity(0, saved)


class Other:
    """Another thread, sending events when asked (on a given CPU)."""

    def __init__(self) -> None:
        self.todo: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        self.tid = 0
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        self.tid = self.done.get()

    def _run(self) -> None:
        self.done.put(threading.get_native_id())
        while True:
            job = self.todo.get()
            if job is None:
                return
            try:
                on(*job)
            except BaseException as e:  # raised in the caller: a dead thread would hang it
                self.done.put(e)
            else:
                self.done.put(None)

    def __call__(self, cpu: int, fn: Callable[[], None]) -> None:
        self.todo.put((cpu, fn))
        error = self.done.get(timeout=30)
        if error is not None:
            raise error

    def stop(self) -> None:
        self.todo.put(None)
        self.thread.join()


def wait_gone(tid: int) -> None:
    """Wait (5 s at most) until this process's thread ``tid`` has been reaped from /proc."""
    deadline = time.monotonic() + 5
    while os.path.exists("/proc/%d/task/%d" % (os.getpid(), tid)) and time.monotonic() < deadline:
        time.sleep(0.01)


def mine(snap: Snapshot, tid: int) -> ExitStats:
    (st,) = [s for k, s in snap.stats.items() if k.tid == tid]
    return st


def hvc(d: Driver) -> Callable[[], None]:
    return lambda: d.arm64_exit(TRAP, EC_HVC64)


def test_only_the_default_path_pairs_through_the_cache():
    layout = detect(FORMATS["arm64"])
    assert "-DKVMEXIT_ENTRY_CACHE" in render_program(layout).cflags
    for opt in ({"subreasons": True}, {"slow_ns": 1000}, {"guest": True}, {"split": True, "guest": True}):
        assert "-DKVMEXIT_ENTRY_CACHE" not in render_program(layout, **opt).cflags, opt
    assert entry_cache(False, None, False, False) and not entry_cache(True, None, False, False)


def test_a_pending_pair_is_the_same_read_by_user_space_or_folded_by_the_kernel(d):
    tid = threading.get_native_id()

    def pair() -> None:
        d.arm64_exit(TRAP, EC_HVC64)
        time.sleep(0.002)
        d.entry()

    on(0, pair)
    pending = mine(d.snapshot(), tid)  # the kernel has not folded it yet: user space did
    assert (pending.pairs, pending.open, pending.unfinished) == (1, 0, 0)
    assert pending.total_ns >= 2_000_000 and pending.min_ns == pending.max_ns == pending.total_ns
    assert pending.hist[hist_slot(pending.total_ns)] == 1 and pending.sumsq_ns2 == pending.total_ns**2
    on(0, hvc(d))  # the next exit folds it in the kernel
    folded = mine(d.snapshot(), tid)
    assert folded._replace(open=0) == pending and folded.open == 1
    assert d.snapshot().health.unpaired_entries == 0


def test_migrations_and_other_threads_never_pair_wrongly(d):
    """Every case the cache handles besides the common one, each pair timed to show which exit it
    closed: a wrong pairing would be 50 ms long, the right ones are not."""
    tid = threading.get_native_id()
    other = Other()
    try:
        ex = hvc(d)
        # exit on 0, entry on 1 (no record there: the slot pairs it), exit and entry on 1 (the cache),
        # exit on 0 (folds the pair left on CPU 1 from there), entry on 0 (the cache)
        on(0, ex)
        on(1, d.entry)
        on(1, ex)
        on(1, d.entry)
        on(0, ex)
        on(0, d.entry)
        # The record the thread left on CPU 0 is stale once an entry elsewhere closed its exit:
        # exit on 0, 50 ms, entry on 1; exit on 1, entry on 0 must close the exit on 1, not on 0.
        on(0, ex)
        time.sleep(0.05)
        on(1, d.entry)
        on(1, ex)
        on(0, d.entry)
        st = mine(d.snapshot(), tid)
        assert (st.pairs, st.unfinished, st.open) == (5, 0, 0)
        assert 50_000_000 <= st.max_ns and sorted_pairs_under(st, 50_000_000) == 4
        # Another thread's exit on the CPU of a pending pair (not in KVM): the pair is mailed to
        # this thread's slot and closed there by its next exit, on another CPU.
        on(0, ex)
        on(0, d.entry)
        other(0, lambda: d.arm64_exit(TRAP, EC_SYS64))
        other(0, d.entry)
        snap = d.snapshot()  # user space reads the mailed pair
        assert (mine(snap, tid).pairs, mine(snap, tid).open) == (6, 0)
        assert (mine(snap, other.tid).pairs, mine(snap, other.tid).open) == (1, 0)
        on(1, ex)
        st = mine(d.snapshot(), tid)
        assert (st.pairs, st.unfinished, st.open) == (6, 0, 1)
        # A second entry after a cached one, and one on another CPU, are unpaired; a wakeup after
        # the entry is not the exit's halt time.
        on(1, d.entry)
        on(1, lambda: d.wakeup(12345))
        on(1, d.entry)
        on(0, d.entry)
        on(1, ex)
        snap = d.snapshot()
        st = mine(snap, tid)
        assert (st.pairs, st.unfinished, st.open, st.halt_ns) == (7, 0, 1, 0)
        assert snap.health.unpaired_entries == 2
        # An exit followed by another exit, on another CPU, is unfinished.
        on(0, ex)
        st = mine(d.snapshot(), tid)
        assert (st.pairs, st.unfinished, st.open) == (7, 1, 1)
    finally:
        other.stop()


def sorted_pairs_under(st: ExitStats, ns: int) -> int:
    return sum(n for slot, n in enumerate(st.hist) if n and slot < hist_slot(ns))


def test_a_thread_that_ends_with_a_pending_pair_keeps_it(d):
    done: List[int] = []

    def vcpu() -> None:
        done.append(threading.get_native_id())
        on(0, hvc(d))
        on(0, d.entry)

    t = threading.Thread(target=vcpu)
    t.start()
    t.join()
    time.sleep(0.05)  # the thread is gone from /proc
    snap = d.snapshot()
    st = mine(snap, done[0])
    assert (st.pairs, st.open, st.abandoned, st.unfinished) == (1, 0, 0, 0)
    assert d.snapshot().stats == snap.stats  # its slot was retired with the pair, once


def test_exits_a_thread_makes_after_the_read_and_before_it_ends_are_kept(d):
    """A snapshot reads the slots, then judges which threads have ended: a thread that made more
    exits in between and then ended has its slot read again before it is retired (the first read
    would lose them: seen as 31 lost exits under load)."""
    more: queue.Queue = queue.Queue()
    first_pair = threading.Event()
    tids: List[int] = []

    def vcpu() -> None:
        tids.append(threading.get_native_id())
        on(0, hvc(d))
        on(0, d.entry)
        first_pair.set()
        more.get(timeout=30)  # after the snapshot's read of the slots
        for _ in range(3):
            on(1, hvc(d))
            on(1, d.entry)
        on(0, hvc(d))  # left open: abandoned

    t = threading.Thread(target=vcpu)
    t.start()
    assert first_pair.wait(30)  # its slot exists before the snapshot reads the slots
    resolver = d.source.resolver
    real_alive = resolver.alive

    def alive_after_its_last_exits(tgid: int, tid: int) -> bool:
        if tid == tids[0] and t.is_alive():
            more.put(1)
            t.join()
            wait_gone(tid)
        return real_alive(tgid, tid)

    resolver.alive = alive_after_its_last_exits  # type: ignore[method-assign]
    try:
        snap = d.snapshot()
    finally:
        resolver.alive = real_alive  # type: ignore[method-assign]
    st = mine(snap, tids[0])
    assert (st.pairs, st.open, st.abandoned, st.unfinished) == (4, 0, 1, 0)
    assert d.snapshot().stats == snap.stats  # retired once, with everything


def test_threads_migrating_at_random_account_for_every_event(d):
    """Two threads, each moved to a random CPU before each event, with random skips of an entry or
    an exit: counts and times must add up exactly, however the records and mails went."""
    sent: Dict[int, Dict[str, int]] = {}
    errors: List[BaseException] = []

    def vcpu(seed: int) -> None:
        rng = random.Random(seed)
        tid = threading.get_native_id()
        n = sent[tid] = {"exits": 0, "entries": 0, "pairs": 0, "unpaired": 0, "unfinished": 0}
        open_exit = False
        try:
            for _ in range(600):
                kind = rng.random()
                if kind < 0.5 or (not open_exit and kind < 0.9):
                    if open_exit:
                        n["unfinished"] += 1
                    on(rng.randrange(2), hvc(d))
                    n["exits"] += 1
                    open_exit = True
                else:
                    on(rng.randrange(2), d.entry)
                    n["entries"] += 1
                    n["pairs" if open_exit else "unpaired"] += 1
                    open_exit = False
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=vcpu, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    snaps: List[Optional[Snapshot]] = []
    while any(t.is_alive() for t in threads):
        snaps.append(d.snapshot())  # reads race with the kernel: never more than was sent
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert not errors
    snap = d.snapshot()
    for tid, n in sent.items():
        st = [s for k, s in snap.stats.items() if k.tid == tid]
        got = {f: sum(getattr(s, f) for s in st) for f in ("pairs", "unfinished", "open", "abandoned")}
        got["unpaired_all"] = snap.health.unpaired_entries
        assert sum(s.pairs for s in st) == n["pairs"], (n, got)
        assert sum(s.unfinished for s in st) == n["unfinished"], n
        assert sum(s.pairs + s.unfinished + s.open + s.abandoned for s in st) == n["exits"], n
        for s in snaps:
            assert s is not None
            assert sum(v.pairs for k, v in s.stats.items() if k.tid == tid) <= n["pairs"]
    assert snap.health.unpaired_entries == sum(n["unpaired"] for n in sent.values())


def test_a_thread_slot_is_exactly_what_user_space_decodes():
    """live.py's struct formats follow kvmexit.h's (the batch reader checks the sizes)."""
    need_two_cpus()
    drv = Driver(detect(FORMATS["arm64"]))
    try:
        on(0, hvc(drv))
        on(0, drv.entry)
        assert mine(drv.snapshot(), threading.get_native_id()).pairs == 1
        cache = drv.source.bpf["exit_cache"]
        assert len([v for v in cache.values() if v.state]) >= 1
        test_run_raw(drv.fds["kvmexit_entry"], 0x1000)  # a second entry: unpaired, nothing else
        assert drv.snapshot().health.unpaired_entries == 1
    finally:
        drv.close()


# -- resident threads (KVMEXIT_RESIDENT) ---------------------------------------------------------


def pid_tgid(tid: int) -> int:
    return os.getpid() << 32 | tid


def owner_of(d: Driver, cpu: int) -> int:
    """The pid_tgid owning CPU number ``cpu`` of CPUS's rows (0: none)."""
    owners = d.source.bpf["cpu_owner"]
    return int(owners[owners.Key(CPUS[cpu])].value)


def cpu_row_pairs(d: Driver, cpu: int) -> int:
    table, nr = d.source.bpf["cpu_rows"], len(d.source.rows)
    return sum(int(table[table.Key(CPUS[cpu] * nr + i)].pairs) for i in range(nr))


def slot_tail(d: Driver, tid: int) -> tuple:
    threads = d.source.bpf["threads"]
    raw = bytes(threads[threads.Key(tid)])
    return (*_THREAD_TAIL.unpack_from(raw, _ROWS_SIZE * len(d.source.rows)), raw)


def slot_pairs(d: Driver, tid: int) -> int:
    """Pairs in the rows of the thread's slot (not its CPUs' rows)."""
    raw = slot_tail(d, tid)[-1]
    return sum(_VALUE.unpack_from(raw, i * _ROWS_SIZE)[0] for i in range(len(d.source.rows)))


def test_the_default_path_keeps_resident_rows_unless_the_reason_comes_later():
    layout = detect(FORMATS["arm64"])
    assert "-DKVMEXIT_RESIDENT" in render_program(layout).cflags
    assert "-DKVMEXIT_RESIDENT" not in render_program(layout, learn_tgids=True).cflags  # --vm
    assert "-DKVMEXIT_RESIDENT" not in render_program(layout, guest=True).cflags  # no entry cache
    trap = detect(FORMATS["arm64-openeuler-5.10"])
    assert trap.trap_event and "-DKVMEXIT_RESIDENT" not in render_program(trap).cflags


def test_a_thread_owning_its_cpu_pairs_there_without_its_slot(d):
    tid = threading.get_native_id()

    def pairs() -> None:
        for _ in range(5):
            d.arm64_exit(TRAP, EC_HVC64)
            d.entry()
        d.arm64_exit(TRAP, EC_HVC64)  # left open

    on(0, pairs)
    assert owner_of(d, 0) == pid_tgid(tid)
    assert slot_tail(d, tid)[11] == 1  # resident: its open exit is in CPU 0's record
    assert (slot_pairs(d, tid), cpu_row_pairs(d, 0)) == (0, 5)
    st = mine(d.snapshot(), tid)
    assert (st.pairs, st.open, st.unfinished) == (5, 1, 0)
    # Another thread on the owned CPU, the owner's exit open there: the CPU's plain record.
    other = Other()
    try:
        other(0, hvc(d))
        other(0, d.entry)
        assert owner_of(d, 0) == pid_tgid(tid)
        assert slot_pairs(d, other.tid) == 0  # closed in the plain record: no slot lookup at entry
        on(0, d.entry)  # the owner's record was left alone: its entry pairs there
        snap = d.snapshot()
        assert (mine(snap, tid).pairs, mine(snap, tid).open, mine(snap, other.tid).pairs) == (6, 0, 1)
        assert snap.health.unpaired_entries == 0
    finally:
        other.stop()


def test_a_resident_exit_taken_back_on_another_cpu_keeps_its_halt_time(d):
    tid = threading.get_native_id()
    on(0, hvc(d))
    on(0, lambda: d.wakeup(12345))  # into CPU 0's record
    on(0, d.entry)
    pending = mine(d.snapshot(), tid)  # read by user space from the record
    assert (pending.pairs, pending.halt_ns) == (1, 12345)
    on(0, hvc(d))  # folds it into CPU 0's rows
    assert mine(d.snapshot(), tid)._replace(open=0) == pending and cpu_row_pairs(d, 0) == 1
    on(0, lambda: d.wakeup(1000))
    time.sleep(0.002)
    on(1, d.entry)  # entry on another CPU: the open exit is taken back into the slot, with its halt
    on(0, hvc(d))
    on(1, lambda: d.wakeup(20))  # wakeup on another CPU: taken back there
    on(0, d.entry)
    snap = d.snapshot()
    st = mine(snap, tid)
    assert (st.pairs, st.open, st.unfinished, st.halt_ns) == (3, 0, 0, 12345 + 1000 + 20)
    assert st.max_ns >= 2_000_000 and (slot_pairs(d, tid), cpu_row_pairs(d, 0)) == (2, 1)
    assert snap.health.unpaired_entries == 0


def snapshot_once_gone(d: Driver, tid: int) -> Snapshot:
    wait_gone(tid)
    return d.snapshot()


def ended_owner(d: Driver, left_open: bool) -> int:
    """The tid of a thread that made 3 pairs on CPU 0 (the first to exit there: its owner), then,
    if ``left_open``, an exit left open (abandoned), and ended."""
    tids: List[int] = []

    def vcpu() -> None:
        tids.append(threading.get_native_id())
        for _ in range(3):
            on(0, hvc(d))
            on(0, d.entry)
        if left_open:
            on(0, hvc(d))  # folds the third pair into the rows

    t = threading.Thread(target=vcpu)
    t.start()
    t.join()
    return tids[0]


def test_an_ended_owner_frees_its_cpu_rows_for_the_next_thread(d):
    tid = ended_owner(d, left_open=True)
    assert owner_of(d, 0) == pid_tgid(tid)
    snap = snapshot_once_gone(d, tid)
    st = mine(snap, tid)
    assert (st.pairs, st.open, st.abandoned, st.unfinished) == (3, 0, 1, 0)
    assert (owner_of(d, 0), cpu_row_pairs(d, 0)) == (0, 0)  # read, retired, freed
    assert d.snapshot().stats == snap.stats  # once
    on(0, hvc(d))  # the next thread to exit there owns them
    on(0, d.entry)
    assert owner_of(d, 0) == pid_tgid(threading.get_native_id())
    assert mine(d.snapshot(), threading.get_native_id()).pairs == 1


def drop_slot(d: Driver, tid: int) -> None:
    """Remove the thread's slot from the map, as another reader retiring it meanwhile would: its
    CPU's rows stay owned (the case _thread_slots reads as rows of an owner whose slot is gone)."""
    threads = d.source.bpf["threads"]
    del threads[threads.Key(tid)]


def test_a_live_owner_without_its_slot_is_read_from_its_cpus_rows_and_record(d):
    tid = threading.get_native_id()
    for _ in range(4):
        on(0, hvc(d))
        on(0, d.entry)
    # The last pair is still in CPU 0's record (folded into its rows at the owner's next exit).
    assert (owner_of(d, 0), cpu_row_pairs(d, 0)) == (pid_tgid(tid), 3)
    drop_slot(d, tid)
    assert mine(d.snapshot(), tid).pairs == 4  # its rows and its record's pair
    assert owner_of(d, 0) == pid_tgid(tid)  # alive: kept, not freed
    on(0, hvc(d))  # the owner's fast path on its CPU needs no slot: it stays without one
    on(0, d.entry)
    on(0, hvc(d))  # left open in the record
    snap = d.snapshot()
    st = mine(snap, tid)
    assert (st.pairs, st.open, st.abandoned) == (5, 1, 0)
    assert snap.health.unpaired_entries == 0


@pytest.mark.parametrize("left_open", [False, True])
def test_an_ended_owner_without_its_slot_is_retired_once_and_its_cpu_freed(d, left_open):
    tid = ended_owner(d, left_open)
    # The last pair, or the open exit, is in CPU 0's record.
    assert (owner_of(d, 0), cpu_row_pairs(d, 0)) == (pid_tgid(tid), 3 if left_open else 2)
    drop_slot(d, tid)
    snap = snapshot_once_gone(d, tid)
    st = mine(snap, tid)
    assert (st.pairs, st.open, st.abandoned) == (3, 0, 1 if left_open else 0)
    assert (owner_of(d, 0), cpu_row_pairs(d, 0)) == (0, 0)  # read, retired, freed
    assert d.snapshot().stats == snap.stats  # once


def test_threads_with_halts_and_keyed_reasons_at_random_account_for_every_event(d):
    """Three threads (more than CPUs: one owns none), each event on a random CPU, with wakeups
    inside and outside exits and reasons with and without a row: counts, halt time and unpaired
    entries add up exactly."""
    keyed_ec = next(ec for ec in range(1, 64) if (TRAP, ec) not in ROW_REASONS["arm64"])
    ecs = (EC_HVC64, EC_SYS64, keyed_ec)
    sent: Dict[int, Dict[str, int]] = {}
    errors: List[BaseException] = []
    owners_seen = set()

    def vcpu(seed: int) -> None:
        rng = random.Random(seed)
        tid = threading.get_native_id()
        n = sent[tid] = {"exits": 0, "pairs": 0, "unpaired": 0, "unfinished": 0, "halt": 0, "open_halt": 0}
        open_exit = False
        try:
            for _ in range(500):
                kind = rng.random()
                cpu = rng.randrange(2) if rng.random() < 0.3 else seed % 2  # mostly on its own CPU
                if kind < 0.15:
                    ns = rng.randrange(1, 10_000)
                    on(cpu, lambda ns=ns: d.wakeup(ns))
                    n["open_halt"] += ns if open_exit else 0
                elif kind < 0.55 or (not open_exit and kind < 0.9):
                    if open_exit:
                        n["unfinished"] += 1
                    ec = rng.choice(ecs)
                    on(cpu, lambda ec=ec: d.arm64_exit(TRAP, ec))
                    n["exits"] += 1
                    n["open_halt"] = 0
                    open_exit = True
                else:
                    on(cpu, d.entry)
                    if open_exit:
                        n["pairs"] += 1
                        n["halt"] += n["open_halt"]
                    else:
                        n["unpaired"] += 1
                    open_exit = False
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=vcpu, args=(seed,)) for seed in (1, 2, 3)]
    for t in threads:
        t.start()
    snaps: List[Snapshot] = []
    while any(t.is_alive() for t in threads):
        snaps.append(d.snapshot())
        owners_seen.update(owner_of(d, cpu) & 0xFFFFFFFF for cpu in range(2))
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert not errors
    assert owners_seen & set(sent)  # the resident path ran
    for tid in sent:
        snap = snapshot_once_gone(d, tid)
    for tid, n in sent.items():
        st = [s for k, s in snap.stats.items() if k.tid == tid]
        got = {f: sum(getattr(s, f) for s in st) for f in ("pairs", "unfinished", "open", "abandoned", "halt_ns")}
        assert got["pairs"] == n["pairs"] and got["unfinished"] == n["unfinished"], (n, got)
        assert got["halt_ns"] == n["halt"], (n, got)
        assert got["pairs"] + got["unfinished"] + got["open"] + got["abandoned"] == n["exits"], (n, got)
        for s in snaps:
            assert sum(v.pairs for k, v in s.stats.items() if k.tid == tid) <= n["pairs"]
    assert snap.health.unpaired_entries == sum(n["unpaired"] for n in sent.values())
    assert d.snapshot().stats == snap.stats
