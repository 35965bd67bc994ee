"""Reading one plain trace file in several processes (``report --jobs``), with a result identical
to reading it in one.

The file is cut at line starts into byte ranges, :data:`PARTS_PER_JOB` per process; this process
and forked workers each take the next range not taken when they are free (a process slowed by other
work on its CPU reads fewer), and the workers send theirs back at the end. Each range is read by
:class:`RangePairer`, the engine of :mod:`.pairing` with one difference: a thread's state at the
range's start (an open exit, its last entry, its split) is unknown, so the thread's events are
*deferred* (logged in order, not applied) until one of them makes its state independent of what
came before:

- ``sched_process_exit`` (nothing open, no entry kept);
- a ``kvm_entry`` or a ``kvm_exit`` after an earlier ``kvm_exit`` of the thread in the range (after
  it: nothing open and the entry's time kept, or a new exit open with no guest time).

From there the range's engine applies the thread's events itself. The parent then takes the ranges
in order: it replays each range's log on its own engine (which holds the state at the range's
start), hands each synced thread over to the range at its sync point, and adds the range's
statistics and end state. Everything else the engine keeps is stitched as well:

- ``sched_switch`` halves of threads not synced are folded per thread into a :class:`SwitchRun`
  (what a run of switches does to an open exit's split), so their log stays short;
- a thread whose first event is an entry has nothing open after it: its later entries are
  unpaired here, and only its last entry time goes into the log (``ENTRY_TS``);
- losses (``[LOST N EVENTS]``) go into the log (they close open exits of other ranges' threads);
- whether any ``sched_switch``/``kvm_userspace_exit`` came before a pair decides whether its halt
  time is clamped to its duration: a range records the halt time it would clamp had an earlier
  range had one (:attr:`RangePairer.excess`), and the parent takes it off when so;
- x86 reasons printed as numbers take the isa of the last named reason: a range that meets one
  before any name is read again once the isa at its start is known (rare);
- malformed lines are numbered within the range and offset by the lines of the ranges before.

The slow-exit log (``--slower-than``) and the heatmaps (``--html``) are read in one process (their
state is kept in trace order; see :func:`plan`).
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from typing import Any, Dict, FrozenSet, List, Optional, Set, Tuple

from ...errors import BadTrace, KvmexitError
from ...model import KERNEL_FIELDS, paused_gc
from ...reasons import ISA_VMX
from .decode import IsaUnknown
from .formats import MAX_LINE, LineReader, open_input, split_head
from .pairing import A_HALT, S_ACC, S_HALT, S_KEY, S_SPLIT, S_TS, Pairer, Split, Thread, TraceHealth

__all__ = ["MIN_RANGE", "RangePairer", "SwitchRun", "cut_points", "plan", "read_parallel", "usable_cpus"]

#: The automatic choice (``--jobs`` not given) reads in parallel only ranges of at least this many
#: bytes (a worker costs a fork and the transfer of its statistics: a few ms).
MIN_RANGE = 8 << 20

# Kinds of deferred items in a range's log.
EXIT, ENTRY, THREAD_EXIT, WAKEUP, TRAP, SUB, UEXIT, RUN, LOST, ENTRY_TS, FLAG_SWITCH, FLAG_UEXIT = range(12)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class SwitchRun:
    """The ``sched_switch`` halves of one thread between two of its other events, folded: what they
    do to the thread's open exit (if it has one) is what :meth:`apply` does to its split, exactly
    as :meth:`.pairing.Pairer.switch` would have, half by half."""

    __slots__ = (
        "first",
        "l_blk",
        "l_pre",
        "last",
        "lead_in",
        "n",
        "off",
        "runnable",
        "s_blk",
        "s_off",
        "s_pre",
        "seen_out",
    )

    def __init__(self) -> None:
        self.lead_in: Optional[int] = None  # the first switch-in before any switch-out
        self.seen_out = False
        self.off = 0  # the last switch-out's time (0: back on CPU since)
        self.runnable = False
        self.n = self.first = self.last = self.l_pre = self.l_blk = self.s_pre = self.s_blk = self.s_off = 0

    def switch_out(self, ts: int, runnable: bool) -> None:
        self.seen_out = True
        self.off = ts
        self.runnable = runnable

    def switch_in(self, ts: int) -> None:
        if not self.seen_out:
            if self.lead_in is None:
                self.lead_in = ts  # later ones find the thread on CPU: nothing
        elif self.off:  # Split.back_on_cpu, summed
            off = ts - self.off
            pre, blk = (off, 0) if self.runnable else (0, off)
            if not self.n:
                self.first = self.off
            self.last = self.off
            self.l_pre, self.l_blk = pre, blk
            self.s_pre += pre
            self.s_blk += blk
            self.s_off += off
            self.n += 1
            self.off = 0

    def apply(self, start: Optional[list]) -> None:
        """The halves' effect on ``start``, the thread's open exit (None: nothing open, no effect)."""
        if start is None:
            return
        split = start[S_SPLIT]
        if split is None:
            if not self.seen_out:
                return  # a switch-in finds no split: nothing
            split = start[S_SPLIT] = Split()
        if self.lead_in is not None and split.off_ts:
            split.back_on_cpu(self.lead_in)
        if self.n:
            if not split.p_count:
                split.p_first = self.first
            split.p_last = self.last
            split.l_pre, split.l_blk = self.l_pre, self.l_blk
            split.p_pre += self.s_pre
            split.p_blk += self.s_blk
            split.p_count += self.n
            if split.vmm_ts:
                split.vmm_off += self.s_off
            split.off_ts = 0
        if self.seen_out:
            split.off_ts = self.off
            split.runnable = self.runnable


class RangePairer(Pairer):
    """The engine of one byte range of a file: :class:`.pairing.Pairer`'s rules for threads whose
    state is known, the log of deferred events for the others (see the module docstring)."""

    def __init__(self, layout: str) -> None:
        super().__init__(layout)
        #: Threads whose state this range knows (synced) are in :attr:`known`: their events are
        #: applied here; :meth:`.pairing.Pairer.exit` and ``entry`` send the others' to ``_defer_*``.
        self.deferring = True
        #: Threads not synced whose deferred events include an exit.
        self.opened: Set[int] = set()
        #: Threads not synced whose first event was an entry -> their last entry since (None: none).
        self.semi: Dict[int, Optional[int]] = {}
        self.runs: Dict[int, SwitchRun] = {}
        self.log: List[tuple] = []
        #: (tid, code, detail) -> halt ns the pairs of this range would have had clamped, had an
        #: earlier range had a sched_switch or kvm_userspace_exit (this one had none yet).
        self.excess: Dict[Tuple[int, int, int], int] = {}
        self.sub_excess: Dict[Tuple[int, int, int, int], int] = {}

    def _defer(self, tid: int, item: tuple) -> None:
        run = self.runs.pop(tid, None)
        if run is not None:
            self.log.append((RUN, tid, run))
        self.log.append(item)

    def _seen(self, ts: int) -> None:
        self.last_ns = ts
        if self.first_ns is None:
            self.first_ns = ts

    def _defer_exit(self, ts: int, thread: Thread, value: Tuple[int, int]) -> None:
        """A kvm_exit of a thread not synced (:meth:`.pairing.Pairer.exit` sends it here)."""
        tid = thread[0]
        self._seen(ts)
        if tid in self.semi:
            last = self.semi.pop(tid)
            if last is not None:
                self.log.append((ENTRY_TS, tid, last))
        sync = tid in self.opened
        self._defer(tid, (EXIT, ts, thread, value, sync))
        if sync:
            self.opened.discard(tid)
            self.known.add(tid)
            self._state(tid).entry_ts = 0  # an exit since the last entry: no guest time for this one
            Pairer.exit(self, ts, thread, value)
        else:
            self.opened.add(tid)

    def _defer_entry(self, ts: int, thread: Thread) -> None:
        """A kvm_entry of a thread not synced (:meth:`.pairing.Pairer.entry` sends it here)."""
        tid = thread[0]
        self._seen(ts)
        if tid in self.semi:  # nothing open since its first entry here
            self.unpaired_entries += 1
            self.semi[tid] = ts
            return
        sync = tid in self.opened
        self._defer(tid, (ENTRY, ts, thread, sync))
        if sync:
            self.opened.discard(tid)
            self.known.add(tid)
            self._state(tid).entry_ts = ts
        else:
            self.semi[tid] = None

    def _note_unclamped(self, ts: int, s: list) -> None:
        """An entry closing ``s``, an exit with halt time, before this range's first switch or
        userspace exit: the halt time its pair would have had clamped had an earlier range had one
        (:attr:`excess`)."""
        over = s[S_HALT] - max(ts - s[S_TS], 0)
        if over > 0:
            key = s[S_KEY]
            self.excess[key] = self.excess.get(key, 0) + over
            skey = self._sub_key(s)
            if skey is not None:
                self.sub_excess[skey] = self.sub_excess.get(skey, 0) + over

    def thread_exit(self, ts: int, thread: Thread, value: Any = None) -> None:
        tid = thread[0]
        if tid in self.known:
            Pairer.thread_exit(self, ts, thread, value)
            return
        self.semi.pop(tid, None)
        self.opened.discard(tid)
        self._defer(tid, (THREAD_EXIT, ts, thread))
        self.known.add(tid)

    def wakeup(self, ts: int, thread: Thread, ns: int) -> None:
        tid = thread[0]
        if tid in self.known:
            Pairer.wakeup(self, ts, thread, ns)
            return
        self.wakeups += 1
        if tid not in self.semi:
            self._defer(tid, (WAKEUP, ts, thread, ns))

    def trap(self, ts: int, thread: Thread, esr_ec: int) -> None:
        tid = thread[0]
        if tid in self.known:
            Pairer.trap(self, ts, thread, esr_ec)
        elif tid not in self.semi:
            self._defer(tid, (TRAP, ts, thread, esr_ec))

    def sub_event(self, ts: int, thread: Thread, record: Any) -> None:
        tid = thread[0]
        if tid in self.known:
            Pairer.sub_event(self, ts, thread, record)
            return
        self.sub_events += 1
        if tid not in self.semi:
            self._defer(tid, (SUB, ts, thread, record))

    def userspace_exit(self, ts: int, thread: Thread, record: Any) -> None:
        if not self.userspace_exits:
            self.log.append((FLAG_UEXIT,))
        tid = thread[0]
        if tid in self.known:
            Pairer.userspace_exit(self, ts, thread, record)
            return
        self.userspace_exits += 1
        self.sub_events += 1
        if tid not in self.semi:
            self._defer(tid, (UEXIT, ts, thread, record))

    def switch(self, ts: int, thread: Thread, sw: Any) -> None:
        if not self.switches:
            self.log.append((FLAG_SWITCH,))
        self.switches += 1
        prev = sw.prev
        if prev in self.known:
            s = self.open_exit(prev)
            if s is not None:
                if s[S_SPLIT] is None:
                    s[S_SPLIT] = Split()
                s[S_SPLIT].off_ts = ts
                s[S_SPLIT].runnable = sw.runnable
                self.off_cpu[prev] = ts
        elif prev not in self.semi:
            run = self.runs.get(prev)
            if run is None:
                run = self.runs[prev] = SwitchRun()
            run.switch_out(ts, sw.runnable)
        nxt = sw.next
        if nxt in self.known:
            if self.off_cpu.pop(nxt, None) is not None:
                s = self.open_exit(nxt)
                if s is not None and s[S_SPLIT] is not None and s[S_SPLIT].off_ts:
                    s[S_SPLIT].back_on_cpu(ts)
        elif nxt not in self.semi:
            run = self.runs.get(nxt)
            if run is None:
                run = self.runs[nxt] = SwitchRun()
            run.switch_in(ts)

    def lost(self, cpu: int, n: Optional[int]) -> None:
        """Open exits of this range's threads on ``cpu`` are closed here; the log carries the loss
        to the threads not synced (and the count of losses: :meth:`TraceHealth.add_lost`)."""
        for tid, run in self.runs.items():
            self.log.append((RUN, tid, run))
        self.runs = {}
        self.log.append((LOST, cpu, n))
        self._close_on(cpu)

    def close(self) -> None:
        """At the range's end: what is still folded goes into the log; pending pairs are added."""
        for tid, run in self.runs.items():
            self.log.append((RUN, tid, run))
        self.runs = {}
        for tid, last in self.semi.items():
            if last is not None:
                self.log.append((ENTRY_TS, tid, last))
        self.semi = {}
        self.flush()


class RangeResult:
    """What a range's reader sends back (picklable): its engine's statistics, end state and log."""

    def __init__(self, p: RangePairer, isa: Optional[int]) -> None:
        self.log = p.log
        self.stats = p.stats
        self.sub_stats = p.sub_stats
        self.abandoned = p.abandoned
        self.abandoned_subs = p.abandoned_subs
        self.unpaired_entries = p.unpaired_entries
        self.comm = p.comm
        self.tgid = p.tgid
        self.health = p.health
        self.counts = (p.wakeups, p.sub_events, p.switches, p.userspace_exits)
        self.first_ns = p.first_ns
        self.last_ns = p.last_ns
        self.known = p.known
        # (A range keeps states only for the threads it knows.)
        self.starts = p.open_exits()
        self.entry_ts = {tid: st.entry_ts for tid, st in p.slots.items() if st.entry_ts is not None}
        self.off_cpu = {tid: p.off_cpu[tid] for tid in p.known if tid in p.off_cpu}
        self.excess = p.excess
        self.sub_excess = p.sub_excess
        self.isa = isa  # x86: the decoder's isa at the end (None: no named reason in the range)


class _Slice:
    """``size`` bytes of a file from its current position, as LineReader reads a stream."""

    def __init__(self, f: Any, size: int) -> None:
        self.f = f
        self.left = size

    def read1(self, n: int) -> bytes:
        if self.left <= 0:
            return b""
        block = self.f.read(min(n, self.left))
        self.left -= len(block)
        return block

    read = read1


def read_range(
    path: str,
    start: int,
    end: int,
    fmt: str,
    layout: str,
    tids: Set[int],
    tgids: Set[int],
    names: Any,
    isa: Optional[int],
    max_line: int = MAX_LINE,
    recorded: FrozenSet[str] = frozenset(),
) -> RangeResult:
    """Read bytes ``start`` to ``end`` (line starts) of ``path``. ``isa``: x86's isa at ``start``
    (None: unknown; :class:`IsaUnknown` if a number needs it); ``recorded``: the events the
    trace's header says were recorded."""
    from .reader import _loop

    pairer = RangePairer(layout)
    pairer.recorded = recorded
    decoder = pairer.decoder
    assert decoder is not None
    decoder.isa = isa
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        reader = LineReader(_Slice(f, end - start), max_line=max_line)  # type: ignore[arg-type]
        with paused_gc():
            _loop(reader.batches(), pairer, tids, tgids, names, fmt)
    pairer.close()
    return RangeResult(pairer, decoder.isa)


def _merge_acc(into: list, acc: list) -> None:
    for i, f in enumerate(KERNEL_FIELDS):
        if f.words > 1:
            into[i] = [a + b for a, b in zip(into[i], acc[i])]
        elif f.merge == "min":
            if acc[i] < into[i]:
                into[i] = acc[i]
        elif f.merge == "max":
            if acc[i] > into[i]:
                into[i] = acc[i]
        else:
            into[i] += acc[i]


def _handover(p: Pairer, tid: int) -> None:
    p.slots.pop(tid, None)
    p.off_cpu.pop(tid, None)


def stitch(p: Pairer, r: RangeResult) -> None:
    """Add range ``r`` to ``p``, the engine holding the state at the range's start."""
    flags_before = bool(p.switches or p.userspace_exits)
    counts = (p.wakeups, p.sub_events, p.switches, p.userspace_exits)
    first_ns, last_ns = p.first_ns, p.last_ns
    for item in r.log:
        kind = item[0]
        if kind == EXIT:
            p.exit(item[1], item[2], item[3])
            if item[4]:
                _handover(p, item[2][0])
        elif kind == ENTRY:
            p.entry(item[1], item[2])
            if item[3]:
                _handover(p, item[2][0])
        elif kind == RUN:
            item[2].apply(p.open_exit(item[1]))
        elif kind == WAKEUP:
            p.wakeup(item[1], item[2], item[3])
        elif kind == SUB:
            p.sub_event(item[1], item[2], item[3])
        elif kind == UEXIT:
            p.userspace_exit(item[1], item[2], item[3])
        elif kind == TRAP:
            p.trap(item[1], item[2], item[3])
        elif kind == THREAD_EXIT:
            p.thread_exit(item[1], item[2])
            _handover(p, item[2][0])
        elif kind == LOST:
            p.lost(item[1], item[2])
        elif kind == ENTRY_TS:
            st = p.slots.get(item[1])
            if st is not None and st.entry_ts is not None:
                st.entry_ts = item[2]
        elif kind == FLAG_SWITCH:
            p.switches += 1
        elif kind == FLAG_UEXIT:
            p.userspace_exits += 1
    # The range counted every event of its own (deferred or not); the replay's counts are dropped.
    p.wakeups, p.sub_events, p.switches, p.userspace_exits = (a + b for a, b in zip(counts, r.counts))
    p.first_ns = first_ns if first_ns is not None else r.first_ns
    p.last_ns = r.last_ns if r.first_ns is not None else last_ns
    for key, acc in r.stats.items():
        _merge_acc(p._acc(key), acc)
    for skey, acc in r.sub_stats.items():
        into = p.sub_stats.get(skey)
        if into is None:
            into = p.sub_stats[skey] = acc
        else:
            _merge_acc(into, acc)
    if flags_before:  # the pairs before this range's first switch were clamped after all
        for key, over in r.excess.items():
            p._acc(key)[A_HALT] -= over
        for skey, over in r.sub_excess.items():
            p.sub_stats[skey][A_HALT] -= over
    for key, n in r.abandoned.items():
        p.abandoned[key] = p.abandoned.get(key, 0) + n
    for skey, n in r.abandoned_subs.items():
        p.abandoned_subs[skey] = p.abandoned_subs.get(skey, 0) + n
    p.unpaired_entries += r.unpaired_entries
    for tid, comm in r.comm.items():
        p.comm.setdefault(tid, comm)
    for tid, tgid in r.tgid.items():
        p.tgid.setdefault(tid, tgid)
    for tid in r.known:
        _handover(p, tid)
    for tid, s in r.starts.items():
        s[S_ACC] = p._acc(s[S_KEY])
        p._state(tid).start = s
    for tid, last in r.entry_ts.items():
        p._state(tid).entry_ts = last
    p.off_cpu.update(r.off_cpu)
    _add_health(p.health, r.health)


def _add_health(h: TraceHealth, r: TraceHealth) -> None:
    offset = h.lines
    h.malformed_lines.extend(n + offset for n in r.malformed_lines[: max(0, 5 - len(h.malformed_lines))])
    h.lines += r.lines
    h.events += r.events
    h.other_events += r.other_events
    h.ignored += r.ignored
    h.malformed += r.malformed
    h.too_long += r.too_long
    h.reset_by_loss += r.reset_by_loss
    for tid, n in r.reset_threads.items():
        h.reset_threads[tid] = h.reset_threads.get(tid, 0) + n
    h.negative += r.negative
    h.filtered += r.filtered


def _line_start(f: Any, offset: int, size: int) -> int:
    """The first line start at or after ``offset``."""
    if offset <= 0:
        return 0
    f.seek(offset - 1)
    pos = offset - 1
    while pos < size:
        block = f.read(1 << 16)
        if not block:
            break
        i = block.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(block)
    return size


def cut_points(path: str, size: int, offsets: List[int]) -> List[Tuple[int, int]]:
    """Byte ranges ``[start, end)`` of ``path`` cut at the line starts at or after ``offsets``
    (empty ranges dropped)."""
    with open(path, "rb") as f:
        bounds = [0] + [_line_start(f, o, size) for o in sorted(offsets)] + [size]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


#: Parts per process (evenly cut): who is free takes the next, so a process slowed by other work on
#: its CPU reads fewer of them, and the last to finish waits at most about one part for the others.
PARTS_PER_JOB = 8


def plan(
    path: str, jobs: Optional[int], offsets: Optional[List[int]] = None
) -> Optional[Tuple[List[Tuple[int, int]], int]]:
    """The byte ranges to read ``path`` in and the processes to read them, or None to read it in
    one process: standard input, a compressed or non-regular file, one job, or (``jobs`` None:
    automatic) fewer usable CPUs than 2 or parts smaller than :data:`MIN_RANGE` per process.
    ``offsets``: where to cut (tests), else :data:`PARTS_PER_JOB` parts per process, evenly."""
    if path == "-" or (jobs == 1 and offsets is None):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # the one-process reader says why
    if not stat.S_ISREG(st.st_mode):
        return None
    stream, compression = open_input(path)
    stream.close()
    if compression is not None:
        return None
    size = st.st_size
    n = jobs if jobs is not None else min(usable_cpus(), size // MIN_RANGE)
    if n < 2 and offsets is None:
        return None
    if offsets is None:
        parts = n * PARTS_PER_JOB
        offsets = [size * i // parts for i in range(1, parts)]
    ranges = cut_points(path, size, offsets)
    return (ranges, max(1, min(n, len(ranges)))) if len(ranges) > 1 else None


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM if the parent dies (nothing is left reading behind it)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _claim(counter: Any) -> int:
    if counter is None:
        return -1
    with counter.get_lock():
        k = counter.value
        counter.value = k + 1
    return int(k)


def _read_chunks(counter: Any, todo: List[int], job: tuple) -> List[Tuple[int, Optional[RangeResult]]]:
    """Read the parts ``job[1]`` claimed through ``counter`` (shared by the processes: who is free
    takes the next), or those of ``todo`` without one; None for a part that needs the isa."""
    path, ranges, fmt, layout, tids, tgids, names, max_line, recorded = job
    out: List[Tuple[int, Optional[RangeResult]]] = []
    while True:
        k = _claim(counter) if counter is not None else (todo.pop(0) if todo else -1)
        if not 0 <= k < len(ranges):
            return out
        start, end = ranges[k]
        try:
            isa = ISA_VMX if k == 0 else None  # the isa at the start of a later part: see read_parallel
            out.append((k, read_range(path, start, end, fmt, layout, tids, tgids, names, isa, max_line, recorded)))
        except IsaUnknown:
            out.append((k, None))
        except KvmexitError as e:
            raise _PartError(k, str(e)) from None
        except OSError as e:
            raise _PartError(k, "cannot read %s: %s" % (path, e.strerror or e)) from None
        except MemoryError:
            raise _PartError(k, "out of memory") from None


class _PartError(Exception):
    def __init__(self, k: int, message: str) -> None:
        super().__init__(message)
        self.k = k


def _worker(conn: Any, parent: int, counter: Any, job: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it ends the workers
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    try:
        out: tuple = ("ok", _read_chunks(counter, [], job))
    except _PartError as e:
        out = ("error", str(e), e.k)
    except MemoryError:
        out = ("error", "out of memory", None)
    except Exception as e:  # a bug: one line, the parent says where
        out = ("error", "%s: %s" % (type(e).__name__, e), None)
    try:
        conn.send(out)
    except (OSError, ValueError):
        pass
    conn.close()


def read_parallel(
    path: str,
    ranges: List[Tuple[int, int]],
    fmt: Optional[str],
    layout: Optional[str],
    tids: Set[int],
    tgids: Set[int],
    names: Any,
    max_line: int = MAX_LINE,
    processes: int = 2,
) -> Optional[Tuple[Pairer, str]]:
    """Read ``ranges`` of ``path`` (from :func:`plan`) in ``processes`` processes (this one and
    workers: each takes the next part not taken when it is free, so a process slowed by other work
    on its CPU reads fewer); returns the stitched engine and the format (detected or given), or
    None when the trace's first lines name no layout (then the first exit does: the one-process
    reader reads it). ``processes=1`` reads every part here, one after the other (tests of the
    stitching)."""
    import multiprocessing

    from .reader import check_options, detect

    check_options(fmt, layout)
    with open(path, "rb") as f:
        head, _ = split_head(LineReader(f, max_line=max_line).batches())
    fmt, layout, recorded = detect(head, fmt, layout, names)
    if layout is None:
        return None
    ctx: Any
    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:  # no fork (not Linux): the workers import kvmexit afresh
        ctx = multiprocessing.get_context("spawn")
    job = (path, ranges, fmt, layout, tids, tgids, names, max_line, recorded)
    results: List[Optional[RangeResult]] = [None] * len(ranges)
    procs: List[Any] = []
    conns: List[Any] = []
    counter = ctx.Value("l", 0) if processes > 1 else None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        for _ in range(processes - 1):
            r, w = ctx.Pipe(duplex=False)
            conns.append(r)
            proc = ctx.Process(target=_worker, args=(w, os.getpid(), counter, job), daemon=True)
            procs.append(proc)  # before it starts: a Ctrl-C right after start() still ends it
            proc.start()
            w.close()
        try:
            mine = _read_chunks(counter, list(range(len(ranges))), job)
        except _PartError as e:
            raise BadTrace("%s: bytes %d-%d: %s" % (path, ranges[e.k][0], ranges[e.k][1], e)) from None
        for conn, proc in zip(conns, procs):
            try:
                got = conn.recv()
            except EOFError:
                proc.join()
                raise BadTrace(
                    "%s: a worker reading it ended (exit code %s)" % (path, proc.exitcode),
                    hint="read it in one process: --jobs 1",
                ) from None
            if got[0] == "error":
                where = "bytes %d-%d" % ranges[got[2]] if got[2] is not None else "a worker"
                raise BadTrace("%s: %s: %s" % (path, where, got[1].splitlines()[0] if got[1] else "?"))
            mine += got[1]
        for k, result in mine:
            results[k] = result
    finally:
        started = [proc for proc in procs if proc.pid is not None]
        for proc in started:
            if proc.is_alive():
                proc.terminate()
        for proc in started:
            proc.join()
        for conn in conns:
            conn.close()
    engine = Pairer(layout)
    engine.recorded = recorded
    isa: Optional[int] = ISA_VMX
    for (start, end), result in zip(ranges, results):
        if result is None:  # an x86 number before any name: read again with the isa known
            result = read_range(path, start, end, fmt, layout, tids, tgids, names, isa, max_line, recorded)
        stitch(engine, result)
        if result.isa is not None:
            isa = result.isa
    return engine, fmt
