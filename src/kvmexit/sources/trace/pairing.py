"""Pairing of trace events into a :class:`~kvmexit.model.Snapshot`, by the kernel's rules.

This mirrors ``bpf/kvmexit.bpf.c`` exactly (see the rules in :mod:`kvmexit.model`):

- ``kvm_exit`` opens a timed exit for its thread; if one is already open, that one is counted
  *unfinished* under its own key and replaced;
- ``kvm_entry`` closes the open exit (a *pair*: time, min, max, sum of squares, histogram bucket
  :func:`kvmexit.model.hist_slot`, the BPF side's log-linear bucket) or, with
  none open, counts an *unpaired entry*;
- ``kvm_trap_enter`` (openEuler 5.10+) sets the class of an open TRAP exit, keeping the SError flag
  (the reader applies it only on that layout: elsewhere ``kvm_exit`` carries the class);
- ``kvm_vcpu_wakeup`` adds its ``ns`` to the open exit's halt time;
- ``sched_process_exit`` of a thread with an open exit: that exit is *abandoned* (the thread
  died before its entry), as the live source counts it;
- at the end, exits still open are reported as ``open``.

Trace files add one rule the kernel does not need: a ring-buffer overrun on a CPU (``[LOST N
EVENTS]``) makes pairing across the gap unreliable, so open exits that started on that CPU are
closed as *unfinished* (and counted in :class:`TraceHealth`).

State is kept in plain dicts and lists so that :mod:`.reader` can run the same rules inline on its
hot path; :class:`Pairer`'s methods are the reference implementation and are used by the slow
path and by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from ...model import HIST_SLOTS, KERNEL_FIELDS, ExitKey, ExitStats, Health, Snapshot, ThreadInfo, hist_slot
from ...reasons import arm64

__all__ = ["Pairer", "TraceHealth", "hist_slot", "LAST_SLOT", "new_acc", "acc_stats"]

LAST_SLOT = HIST_SLOTS - 1
_TRAP = arm64.ARM_EXCEPTION_TRAP
_SERROR = arm64.SERROR_PENDING_BIT

# Indexes into a start record: [ts_ns, key, halt_ns, cpu]; key = (tid, code, detail).
S_TS, S_KEY, S_HALT, S_CPU = 0, 1, 2, 3
#: An accumulator is a list with one item per field the kernel keeps (model.KERNEL_FIELDS, in
#: that order; arrays as lists); min/max start at sentinels (reported as None before a pair).
ACC_INDEX = {f.name: i for i, f in enumerate(KERNEL_FIELDS)}
A_PAIRS, A_UNFIN, A_TOTAL = ACC_INDEX["pairs"], ACC_INDEX["unfinished"], ACC_INDEX["total_ns"]
A_MIN, A_MAX, A_HALT, A_HIST = ACC_INDEX["min_ns"], ACC_INDEX["max_ns"], ACC_INDEX["halt_ns"], ACC_INDEX["hist"]
A_SUMSQ = ACC_INDEX["sumsq"]  # [low, high]: here low takes the whole sum (Python ints do not overflow)

NO_MIN = 1 << 64
NO_MAX = -1
_ACC_START = tuple(
    [0] * f.words if f.words > 1 else NO_MIN if f.merge == "min" else NO_MAX if f.merge == "max" else 0
    for f in KERNEL_FIELDS
)
_ARRAYS = tuple(i for i, f in enumerate(KERNEL_FIELDS) if f.words > 1)


def new_acc() -> list:
    acc = list(_ACC_START)
    for i in _ARRAYS:
        acc[i] = list(acc[i])  # type: ignore[arg-type]
    return acc


def acc_stats(acc: list, open_: int = 0, abandoned: int = 0) -> ExitStats:
    """An accumulator as ExitStats (``open_`` and ``abandoned`` are what user space adds)."""
    fields = {}
    paired = acc[A_PAIRS] > 0
    for f, value in zip(KERNEL_FIELDS, acc):
        if f.words > 1:
            value = tuple(value)
        elif f.merge in ("min", "max") and not paired:
            value = None
        fields[f.name] = value
    return ExitStats(open=open_, abandoned=abandoned, **fields)


@dataclass
class TraceHealth:
    """What the trace itself could not tell: losses, bad lines, clock oddities."""

    lines: int = 0
    events: int = 0  # kvm events used (exit, entry, trap, wakeup)
    other_events: int = 0  # well-formed events of other tracepoints
    ignored: int = 0  # comments, headers, blank lines, loss markers
    malformed: int = 0
    malformed_lines: List[int] = field(default_factory=list)
    too_long: int = 0  # malformed lines longer than the reader's limit (formats.MAX_LINE)
    #: Why a compressed input ended before its end marker (its lines up to there were read).
    truncated: Optional[str] = None
    #: CPU -> events reported lost (None: unknown number, e.g. "buffer started").
    lost: Dict[int, Optional[int]] = field(default_factory=dict)
    #: Open exits closed as unfinished because their CPU lost events.
    reset_by_loss: int = 0
    reset_threads: Dict[int, int] = field(default_factory=dict)
    #: Pairs whose entry timestamp was before the exit's (clamped to 0 ns).
    negative: int = 0
    filtered: int = 0  # kvm events of threads excluded by -p/-t
    #: CPU -> events the recorder's ring buffer lost (from the names file of kvmexit record).
    recorded_lost: Dict[int, int] = field(default_factory=dict)

    def note_malformed(self, lineno: int, keep: int = 5) -> None:
        self.malformed += 1
        if len(self.malformed_lines) < keep:
            self.malformed_lines.append(lineno)

    def add_lost(self, cpu: int, n: Optional[int]) -> None:
        if cpu in self.lost:
            old = self.lost[cpu]
            self.lost[cpu] = None if old is None or n is None else old + n
        else:
            self.lost[cpu] = n

    @property
    def accounted(self) -> int:
        return self.events + self.other_events + self.ignored + self.malformed


class Pairer:
    """Per-thread pairing state and cumulative statistics (kernel rules, in Python)."""

    def __init__(self) -> None:
        #: tid -> [ts_ns, key, halt_ns, cpu]
        self.starts: Dict[int, list] = {}
        #: (tid, code, detail) -> accumulator list
        self.stats: Dict[Tuple[int, int, int], list] = {}
        self.tgid: Dict[int, int] = {}
        self.comm: Dict[int, str] = {}
        self.unpaired_entries = 0
        #: (tid, code, detail) -> open exits of threads that exited before their entry
        self.abandoned: Dict[Tuple[int, int, int], int] = {}
        self.wakeups = 0  # kvm_vcpu_wakeup events seen: without any, halt time is unknown
        self.health = TraceHealth()
        self.first_ns: Optional[int] = None
        self.last_ns = 0

    # -- reference implementation of the rules (the reader inlines exit/entry) -----------------

    def exit(self, ts: int, tid: int, code: int, detail: int, cpu: int = -1) -> None:
        prev = self.starts.get(tid)
        if prev is not None:
            acc = self.stats.get(prev[S_KEY])
            if acc is None:
                acc = self.stats[prev[S_KEY]] = new_acc()
            acc[A_UNFIN] += 1
        self.starts[tid] = [ts, (tid, code, detail), 0, cpu]

    def entry(self, ts: int, tid: int) -> None:
        s = self.starts.pop(tid, None)
        if s is None:
            self.unpaired_entries += 1
            return
        d = ts - s[S_TS]
        if d < 0:
            self.health.negative += 1
            d = 0
        acc = self.stats.get(s[S_KEY])
        if acc is None:
            acc = self.stats[s[S_KEY]] = new_acc()
        acc[A_PAIRS] += 1
        acc[A_TOTAL] += d
        acc[A_HALT] += s[S_HALT]
        if d < acc[A_MIN]:
            acc[A_MIN] = d
        if d > acc[A_MAX]:
            acc[A_MAX] = d
        acc[A_SUMSQ][0] += d * d
        acc[A_HIST][hist_slot(d)] += 1

    def trap(self, tid: int, esr_ec: int) -> None:
        s = self.starts.get(tid)
        if s is not None:
            t, code, detail = s[S_KEY]
            if code == _TRAP:
                s[S_KEY] = (t, code, (detail & _SERROR) | (esr_ec & 0x3F))

    def wakeup(self, tid: int, ns: int) -> None:
        self.wakeups += 1
        s = self.starts.get(tid)
        if s is not None:
            s[S_HALT] += ns

    def thread_exit(self, tid: int) -> None:
        """``sched_process_exit`` of ``tid``: its open exit, if any, will never see its entry."""
        s = self.starts.pop(tid, None)
        if s is not None:
            self.abandoned[s[S_KEY]] = self.abandoned.get(s[S_KEY], 0) + 1

    def lost(self, cpu: int, n: Optional[int]) -> None:
        """A gap in ``cpu``'s events: close the open exits that started there as unfinished."""
        self.health.add_lost(cpu, n)
        for tid in [t for t, s in self.starts.items() if s[S_CPU] == cpu]:
            s = self.starts.pop(tid)
            acc = self.stats.get(s[S_KEY])
            if acc is None:
                acc = self.stats[s[S_KEY]] = new_acc()
            acc[A_UNFIN] += 1
            self.health.reset_by_loss += 1
            self.health.reset_threads[tid] = self.health.reset_threads.get(tid, 0) + 1

    # -- results -------------------------------------------------------------------------------

    def snapshot(
        self,
        arch: str,
        names: Optional[Mapping[int, ThreadInfo]] = None,
        tgids: Optional[Mapping[int, int]] = None,
    ) -> Snapshot:
        """The cumulative state now; open exits become the ``open`` gauge.

        ``tgids``/``names`` (from a names side file) fill in what the trace does not show; a tgid
        nobody knows is ``None`` (shown as unknown, never as a process 0).
        """
        names = names or {}
        tgids = tgids or {}
        acc_by_key: Dict[Tuple[int, int, int], list] = {k: list(v) for k, v in self.stats.items()}
        opens: Dict[Tuple[int, int, int], int] = {}
        for s in self.starts.values():
            opens[s[S_KEY]] = opens.get(s[S_KEY], 0) + 1
        stats: Dict[ExitKey, ExitStats] = {}
        for key in set(acc_by_key) | set(opens) | set(self.abandoned):
            tid, code, detail = key
            acc = acc_by_key.get(key) or new_acc()
            tgid = self.tgid.get(tid, tgids.get(tid))
            ek = ExitKey(tgid, tid, code, detail)
            st = acc_stats(acc, opens.get(key, 0), self.abandoned.get(key, 0))
            stats[ek] = stats[ek].merge(st) if ek in stats else st
        threads: Dict[int, ThreadInfo] = {}
        for tid in {k.tid for k in stats}:
            side = names.get(tid)
            comm = self.comm.get(tid) or (side.comm if side else "")
            if side is not None:
                threads[tid] = ThreadInfo(
                    comm=comm, vm=side.vm, vcpu=side.vcpu if side.vcpu is not None else _vcpu(comm)
                )
            else:
                threads[tid] = ThreadInfo(comm=comm, vm=None, vcpu=_vcpu(comm))
        span = self.last_ns - self.first_ns if self.first_ns is not None else 0
        return Snapshot(
            arch=arch,
            stats=stats,
            health=Health(unpaired_entries=self.unpaired_entries, abandoned=sum(self.abandoned.values())),
            threads=threads,
            time_ns=span,
            halt_known=self.wakeups > 0,  # without kvm_vcpu_wakeup events, halt time is unknown
        )


def _vcpu(comm: str) -> Optional[int]:
    from ...names import vcpu_from_comm

    return vcpu_from_comm(comm)
