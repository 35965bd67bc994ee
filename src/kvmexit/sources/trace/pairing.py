"""The offline pairing engine: trace events into a :class:`~kvmexit.model.Snapshot`, by the
kernel's rules. It is the one implementation of the rules in Python; the reader parses lines and
dispatches each event here.

The rules mirror ``bpf/kvmexit.bpf.c`` exactly (see :mod:`kvmexit.model`):

- ``kvm_exit`` opens a timed exit for its thread; if one is already open, that one is counted
  *unfinished* under its own key and replaced;
- ``kvm_entry`` closes the open exit (a *pair*: time, min, max, sum of squares, histogram bucket
  :func:`kvmexit.model.hist_slot`, the BPF side's log-linear bucket) or, with
  none open, counts an *unpaired entry*;
- ``kvm_trap_enter`` (openEuler 5.10+) sets the class of an open TRAP exit, keeping the SError flag
  (applied only on that layout: elsewhere ``kvm_exit`` carries the class);
- ``kvm_vcpu_wakeup`` adds its ``ns`` to the open exit's halt time;
- ``sched_process_exit`` of a thread with an open exit: that exit is *abandoned* (the thread
  died before its entry), as the live source counts it;
- the sub-reason events (:data:`.subdecode.SUB_EVENTS`) that fire inside an open exit are kept with
  it; a pair whose events give it a sub-reason (:func:`.subdecode.exit_sub_arm64`, ``exit_sub_x86``)
  is also recorded under ``(tid, code, detail, sub)`` in :attr:`Pairer.sub_stats`, as the kernel's
  sub-reason map does;
- guest time (issue 11): an exit of a thread whose previous event was a ``kvm_entry`` (no exit
  open) is charged ``exit - entry`` when it closes (pair, unfinished, abandoned), as
  ``KVMEXIT_GUEST`` does; a thread's first exit has none;
- the split of the exit time (issue 11): ``sched_switch`` and ``kvm_userspace_exit`` drive
  :class:`Split` exactly as ``KVMEXIT_SPLIT`` drives ``struct kvmexit_split`` (the rules and their
  precedence are in ``docs/stats-layout.md``); known only where the trace has those events;
- at the end, exits still open are reported as ``open``.

Trace files add one rule the kernel does not need: a ring-buffer overrun on a CPU (``[LOST N
EVENTS]``) makes pairing across the gap unreliable, so open exits that started on that CPU are
closed as *unfinished* (and counted in :class:`TraceHealth`).

**Adding an event** is one entry in :data:`EVENTS` and one rule method of :class:`Pairer`::

    EVENTS[("sched", "sched_switch")] = Event("switch", decode_switch, kvm=False)

    def switch(self, ts: int, thread: Thread, value: Switch) -> None: ...

``decode`` turns the payload (bytes) into the rule's ``value`` (``None``: the line is malformed);
it is a function, the name of a :class:`Pairer` method (when decoding needs the engine's state,
like the layout), or ``None`` for events whose payload is not needed. The rule runs only for
threads the ``-p``/``-t`` filters keep. ``kvm`` says whether the event counts as a KVM event in
:class:`TraceHealth` (``events``; a trace with none is no KVM trace) or as another event.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from functools import partial
from operator import mul
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Set, Tuple, Union

from ...model import (
    HIST_SLOTS,
    KERNEL_FIELDS,
    ExitKey,
    ExitStats,
    Health,
    Snapshot,
    SubKey,
    ThreadInfo,
    bucket_bounds,
    hist_slot,
)
from ...reasons import ARCH_X86, arm64, label
from .decode import Decoder, detect_layout
from .subdecode import SUB_EVENTS, SubEvent, decode_sub, exit_sub_arm64, exit_sub_x86
from .timebins import TimeBins

__all__ = [
    "EVENTS",
    "Event",
    "Handlers",
    "Pairer",
    "Thread",
    "ThreadState",
    "TraceHealth",
    "hist_slot",
    "LAST_SLOT",
    "new_acc",
    "acc_stats",
]

LAST_SLOT = HIST_SLOTS - 1
_TRAP = arm64.ARM_EXCEPTION_TRAP
_SERROR = arm64.SERROR_PENDING_BIT

_EULER_510 = Decoder("arm64-openeuler-5.10")  # reads kvm_trap_enter before any exit named a layout

# Indexes into a start record: [ts_ns, key, halt_ns, cpu, sub-reason records (a list) or None, the
# key's accumulator, guest ns, Split or None]; key = (tid, code, detail). With the slow-exit log,
# the kvm_exit payload follows (S_PAYLOAD).
S_TS, S_KEY, S_HALT, S_CPU, S_SUBS, S_ACC, S_GUEST, S_SPLIT, S_PAYLOAD = 0, 1, 2, 3, 4, 5, 6, 7, 8
#: An accumulator is a list with one item per field the kernel keeps (model.KERNEL_FIELDS, in
#: that order; arrays as lists); min/max start at sentinels (reported as None before a pair).
ACC_INDEX = {f.name: i for i, f in enumerate(KERNEL_FIELDS)}
A_PAIRS, A_UNFIN, A_TOTAL = ACC_INDEX["pairs"], ACC_INDEX["unfinished"], ACC_INDEX["total_ns"]
A_MIN, A_MAX, A_HALT, A_HIST = ACC_INDEX["min_ns"], ACC_INDEX["max_ns"], ACC_INDEX["halt_ns"], ACC_INDEX["hist"]
A_SUMSQ = ACC_INDEX["sumsq"]  # [low, high]: here low takes the whole sum (Python ints do not overflow)
A_GUEST, A_VMM = ACC_INDEX["guest_ns"], ACC_INDEX["vmm_ns"]
A_PREEMPT, A_BLOCKED = ACC_INDEX["preempt_ns"], ACC_INDEX["blocked_ns"]

NO_MIN = 1 << 64
NO_MAX = -1
_ACC_START = tuple(
    [0] * f.words if f.words > 1 else NO_MIN if f.merge == "min" else NO_MAX if f.merge == "max" else 0
    for f in KERNEL_FIELDS
)
_ARRAYS = tuple(i for i, f in enumerate(KERNEL_FIELDS) if f.words > 1)


#: The accumulator's last item (after the kernel's fields): durations of pairs not yet added to
#: the fields. :meth:`Pairer.entry` appends one per pair; :meth:`Pairer.flush` adds them in bulk
#: (C loops: a sort, the sum, the squares; one bisection per bucket), at the latest every batch of lines.
A_PENDING = len(KERNEL_FIELDS)
#: Lower bound of each histogram bucket: bisect gives hist_slot of any d >= 0 (checked in tests).
_BUCKET_LOWS = [bucket_bounds(i)[0] for i in range(HIST_SLOTS)]
_bucket_plus_1 = partial(bisect_right, _BUCKET_LOWS)


def new_acc() -> list:
    acc = list(_ACC_START)
    for i in _ARRAYS:
        acc[i] = list(acc[i])  # type: ignore[arg-type]
    acc.append([])
    return acc


def add_pending(acc: list) -> int:
    """Add the pending durations of an accumulator to its fields; returns how many were negative
    (an entry stamped before its exit: counted as 0 ns). Sorted first: the ends are the min and
    the max, and each histogram bucket is one bisection."""
    pending = acc[A_PENDING]
    if not pending:
        return 0
    pending.sort()
    negative = 0
    if pending[0] < 0:
        negative = bisect_left(pending, 0)
        pending[:negative] = [0] * negative
    acc[A_PAIRS] += len(pending)
    acc[A_TOTAL] += sum(pending)
    if pending[0] < acc[A_MIN]:
        acc[A_MIN] = pending[0]
    if pending[-1] > acc[A_MAX]:
        acc[A_MAX] = pending[-1]
    acc[A_SUMSQ][0] += sum(map(mul, pending, pending))
    hist = acc[A_HIST]
    i, n = 0, len(pending)
    while i < n:
        slot = _bucket_plus_1(pending[i]) - 1
        j = bisect_left(pending, _BUCKET_LOWS[slot + 1], i) if slot < LAST_SLOT else n
        hist[slot] += j - i
        i = j
    acc[A_PENDING] = []
    return negative


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


class Thread(NamedTuple):
    """Who emitted an event line: what the line's prefix says (the reader caches one per prefix)."""

    tid: int
    tgid: Optional[int] = None
    cpu: int = -1
    comm: str = ""
    #: Kept by the -p/-t filters.
    wanted: bool = True


class Event(NamedTuple):
    """How one trace event drives the engine (see the module docstring)."""

    rule: str  #: name of the :class:`Pairer` method applying it
    #: payload -> value for the rule (None: malformed); a :class:`Pairer` method's name, or None
    decode: Union[str, Callable[[bytes], Any], None] = None
    kvm: bool = True  #: counted in TraceHealth.events (else other_events)


class Switch(NamedTuple):
    """A ``sched_switch``: ``prev`` goes off CPU (runnable or not), ``next`` comes on."""

    prev: int
    runnable: bool
    next: int


def _pid(word: bytes, key: bytes) -> int:
    if not word.startswith(key) or not word[len(key) :].isdigit():
        raise ValueError(word)
    return int(word[len(key) :])


def decode_switch(payload: bytes) -> Optional[Switch]:
    """``sched_switch``'s payload, as ftrace and perf print it (``prev_comm=A prev_pid=1 prev_prio=120
    prev_state=R+ ==> next_comm=B next_pid=2 next_prio=120``) or trace-cmd's plugin (``A:1 [120] R+ ==>
    B:2 [120]``); comms may hold spaces, so it is split from the right (linear in the line). Runnable
    is what ftrace prints as ``R`` or ``R+``, as the kernel side decides it."""
    head, sep, tail = payload.rstrip().rpartition(b" ==> ")
    if not sep:
        return None
    try:
        words = head.rsplit(b" ", 3)
        if len(words) == 4 and words[1].startswith(b"prev_pid="):
            prev, state = _pid(words[1], b"prev_pid="), words[3][len(b"prev_state=") :]
            if not words[3].startswith(b"prev_state="):
                return None
            nxt = tail.rsplit(b" ", 2)
            if len(nxt) != 3:
                return None
            return Switch(prev, state in (b"R", b"R+"), _pid(nxt[1], b"next_pid="))
        words = head.rsplit(b" ", 2)  # trace-cmd: COMM:PID [PRIO] STATE
        nxt = tail.rsplit(b" ", 1)
        if len(words) != 3 or len(nxt) != 2 or not words[1].startswith(b"["):
            return None
        prev = int(words[0].rpartition(b":")[2])
        return Switch(prev, words[2] in (b"R", b"R+"), int(nxt[0].rpartition(b":")[2]))
    except ValueError:
        return None


class Split:
    """Where an open exit's time goes: the twin of ``struct kvmexit_split`` (``bpf/kvmexit.h``),
    with the same rules (``split_*`` in ``bpf/kvmexit.bpf.c``; see ``docs/stats-layout.md``)."""

    __slots__ = (
        "blocked_ns",
        "l_blk",
        "l_pre",
        "off_ts",
        "p_blk",
        "p_count",
        "p_first",
        "p_last",
        "p_pre",
        "preempt_ns",
        "runnable",
        "vmm_ns",
        "vmm_off",
        "vmm_ts",
    )

    def __init__(self) -> None:
        self.off_ts = self.vmm_ts = self.vmm_off = self.vmm_ns = self.preempt_ns = self.blocked_ns = 0
        self.p_pre = self.p_blk = self.p_first = self.p_last = self.l_pre = self.l_blk = self.p_count = 0
        self.runnable = False

    def vmm_end(self, end: int) -> None:
        if not self.vmm_ts:
            return
        if end > self.vmm_ts + self.vmm_off:
            self.vmm_ns += end - self.vmm_ts - self.vmm_off
        self.vmm_ts = self.vmm_off = 0

    def uexit(self, now: int) -> None:
        self.vmm_end(now)
        self.vmm_ts = now

    def back_on_cpu(self, now: int) -> None:
        off = now - self.off_ts
        pre, blk = (off, 0) if self.runnable else (0, off)
        if not self.p_count:
            self.p_first = self.off_ts
        self.p_last = self.off_ts
        self.l_pre, self.l_blk = pre, blk
        self.p_pre += pre
        self.p_blk += blk
        self.p_count += 1
        if self.vmm_ts:
            self.vmm_off += off
        self.off_ts = 0

    def halt(self, now: int, ns: int) -> None:
        start = now - ns if now > ns else 0
        self.vmm_end(max(start, self.vmm_ts))
        if not self.p_count or self.p_first >= start:
            pass  # nothing pending, or all of it inside the halt: already in halt_ns
        elif self.p_last >= start or not self.l_pre:  # the last inside (a sleep: the halt's block)
            self.preempt_ns += self.p_pre - self.l_pre
            self.blocked_ns += self.p_blk - self.l_blk
        else:
            self.preempt_ns += self.p_pre
            self.blocked_ns += self.p_blk
        self.p_pre = self.p_blk = self.p_count = 0

    def close(self, now: int, delta: int, halt: int) -> Tuple[int, int, int, int]:
        """At the entry: (halt, preempted, blocked, VMM) of the pair, clamped within ``delta``."""
        self.vmm_end(now)
        self.preempt_ns += self.p_pre
        self.blocked_ns += self.p_blk
        halt = min(halt, delta)
        left = delta - halt
        pre = min(self.preempt_ns, left)
        left -= pre
        blk = min(self.blocked_ns, left)
        left -= blk
        return halt, pre, blk, min(self.vmm_ns, left)


def _sub_decoder(name: bytes) -> Callable[[bytes], Any]:
    return lambda payload: decode_sub(name, payload)


#: (subsystem, event name) -> how it drives the engine. The one table of the events read offline.
EVENTS: Dict[Tuple[str, str], Event] = {
    ("kvm", "kvm_exit"): Event("exit", "decode_exit"),
    ("kvm", "kvm_entry"): Event("entry"),
    ("kvm", "kvm_vcpu_wakeup"): Event("wakeup", Decoder.wakeup),
    ("kvm", "kvm_trap_enter"): Event("trap", "decode_trap"),
    # Not kvm events: a trace of thread exits (or sub-reason events) alone is still no KVM trace.
    ("sched", "sched_process_exit"): Event("thread_exit", kvm=False),
}
EVENTS.update({("kvm", name.decode()): Event("sub_event", _sub_decoder(name), kvm=False) for name in SUB_EVENTS})
# The split of the exit time (issue 11); kvm_userspace_exit is a sub-reason event too.
EVENTS[("kvm", "kvm_userspace_exit")] = Event("userspace_exit", _sub_decoder(b"kvm_userspace_exit"), kvm=False)
EVENTS[("sched", "sched_switch")] = Event("switch", decode_switch, kvm=False)

#: Rules whose decoders read a payload the same with leading blanks (the kvm_exit decoder strips
#: the reason, the wakeup decoder searches): the reader's fast path hands payloads as split, with
#: trace-cmd's padding; the others' decoders get them stripped, as the grammar gives them.
_BLANK_BLIND = frozenset(("exit", "wakeup"))


def _stripped(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    return lambda payload: decode(payload.lstrip())


#: A dispatch table bound to one engine: event name as the trace prints it -> (decode, rule, kvm).
Handlers = Dict[bytes, Tuple[Optional[Callable[[bytes], Any]], Callable[[int, Thread, Any], None], bool]]

#: Sub-reason records kept per open exit: the first of each kind decides, and an exit sees a few.
MAX_SUB_RECORDS = 16


class ThreadState:
    """One thread's pairing state (the kernel's per-thread slot), found with one lookup per event."""

    __slots__ = ("accs", "entry_ts", "start", "unnamed")

    def __init__(self) -> None:
        #: The open exit's start record (``S_*``), None when nothing is open.
        self.start: Optional[list] = None
        #: The last kvm_entry's ns, 0 after an exit since, None before the thread's first exit
        #: (guest time is charged from an entry only to a thread that has exited once).
        self.entry_ts: Optional[int] = None
        #: Decoded reason ``(code, detail)`` -> its key ``(tid, code, detail)`` and accumulator.
        self.accs: Dict[Tuple[int, int], Tuple[Tuple[int, int, int], list]] = {}
        #: The engine knows no tgid of the thread yet: its next exit names it (comm, tgid).
        self.unnamed = True


class Pairer:
    """The engine: per-thread pairing state and cumulative statistics (kernel rules, in Python).

    A rule is a method ``rule(ts_ns, thread, value)``; :meth:`handlers` binds :data:`EVENTS` to
    them for the reader.
    """

    def __init__(self, layout: Optional[str] = None, time_bins: Optional[TimeBins] = None) -> None:
        #: tid -> its pairing state (open exit, last entry), from its first exit on
        self.slots: Dict[int, ThreadState] = {}
        #: (tid, code, detail) -> accumulator list
        self.stats: Dict[Tuple[int, int, int], list] = {}
        #: (tid, code, detail, sub) -> accumulator list of the pairs with a sub-reason
        self.sub_stats: Dict[Tuple[int, int, int, int], list] = {}
        self.tgid: Dict[int, int] = {}
        self.comm: Dict[int, str] = {}
        self.unpaired_entries = 0
        #: (tid, code, detail) -> open exits of threads that exited before their entry
        self.abandoned: Dict[Tuple[int, int, int], int] = {}
        #: (tid, code, detail, sub) -> the same, per sub-reason
        self.abandoned_subs: Dict[Tuple[int, int, int, int], int] = {}
        self.sub_events = 0  # sub-reason events seen: without any, sub-reasons are unknown
        self.wakeups = 0  # kvm_vcpu_wakeup events seen: without any, halt time is unknown
        self.health = TraceHealth()
        self.first_ns: Optional[int] = None
        self.last_ns = 0
        #: The payload decoder of this trace's layout; created on the first exit when not given.
        self.decoder: Optional[Decoder] = Decoder(layout) if layout is not None else None
        #: The slow-exit log (``report --slower-than``): gets every pair above its threshold.
        self._slow: Optional[Any] = None
        self.time_bins = time_bins  # (a property: sets _extras)
        #: Accumulators with pending pairs (see :meth:`flush`).
        self._dirty: List[list] = []
        #: Threads switched out inside an exit (the kernel's offcpu map).
        self.off_cpu: Dict[int, int] = {}
        self.switches = 0  # sched_switch events seen: without any, preempted/blocked are unknown
        self.userspace_exits = 0  # kvm_userspace_exit events seen: without any, VMM time is unknown
        self.recorded = frozenset()  # (a property: sets _split_recorded)
        #: Reading one part of a file (:class:`.parallel.RangePairer`): exits and entries of threads
        #: not in :attr:`known` go to its ``_defer_exit``/``_defer_entry`` (a thread with a state in
        #: :attr:`slots` is known: only those without one are tested).
        self.deferring = False
        self.known: Set[int] = set()

    @property
    def recorded(self) -> FrozenSet[str]:
        """The events the trace's recorder says it enabled (``kvmexit record``'s header; empty when
        unknown): those are known to be traced even before (or without) their first line."""
        return self._recorded

    @recorded.setter
    def recorded(self, events: FrozenSet[str]) -> None:
        self._recorded = events
        #: The split's events were recorded: every pair is split, as the live --split does.
        self._split_recorded = bool(events & {"sched_switch", "kvm_userspace_exit"})

    @property
    def time_bins(self) -> Optional[TimeBins]:
        return self._time_bins

    @time_bins.setter
    def time_bins(self, bins: Optional[TimeBins]) -> None:
        self._time_bins = bins
        #: A new exit's S_SUBS: None, or (time bins or the slow-exit log wanted) a list that sends
        #: its pair to _pair_extras even without sub-reason events.
        self._extras: Optional[list] = None if bins is None and self._slow is None else []

    @property
    def slow(self) -> Optional[Any]:
        return self._slow

    @slow.setter
    def slow(self, log: Optional[Any]) -> None:
        self._slow = log
        self.time_bins = self._time_bins  # recomputes _extras

    def handlers(self, fmt: str = "ftrace") -> Handlers:
        """:data:`EVENTS` bound to this engine, keyed by the event name as ``fmt`` prints it."""
        out: Handlers = {}
        for (system, name), ev in EVENTS.items():
            decode = getattr(self, ev.decode) if isinstance(ev.decode, str) else ev.decode
            if decode == self.decode_exit and self.decoder is not None and self._slow is None:
                decode = self.decoder.exit  # the same, one call less (the slow-exit log needs the payload)
            if decode is not None and ev.rule not in _BLANK_BLIND:
                decode = _stripped(decode)
            handler = (decode, getattr(self, ev.rule), ev.kvm)
            if fmt == "perf":
                key = "%s:%s" % (system, name)
                out[key.encode()] = handler
                out[b" " + key.encode()] = handler  # ":  kvm:kvm_exit": the reader's split of perf lines
            else:
                out[name.encode()] = handler
        return out

    # -- decoders that need the engine's state -------------------------------------------------

    def decode_exit(self, payload: bytes) -> Optional[Tuple[int, int]]:
        decoder = self.decoder
        if decoder is None:
            layout = detect_layout([(b"kvm_exit", payload.strip())])
            if layout is None:
                return None
            decoder = self.decoder = Decoder(layout)
        value = decoder.exit(payload)
        if self._slow is not None and value is not None:
            return (*value, payload)  # type: ignore[return-value]  # the slow-exit log reads its PC
        return value

    def decode_trap(self, payload: bytes) -> Optional[int]:
        return (self.decoder or _EULER_510).trap(payload)

    # -- the rules -----------------------------------------------------------------------------

    def exit(self, ts: int, thread: Thread, value: Tuple[int, int]) -> None:
        tid = thread[0]
        st = self.slots.get(tid)
        if st is None:
            # A range's engine keeps a state only for the threads it knows: only those without
            # one can be threads to defer.
            if self.deferring and tid not in self.known:
                self._defer_exit(ts, thread, value)
                return
            st = self.slots[tid] = ThreadState()
        self.last_ns = ts
        if st.unnamed:  # the first exit's comm, the first known tgid
            if tid not in self.tgid:
                if tid not in self.comm:
                    self.comm[tid] = thread[3]
                if thread[1] is not None:
                    self.tgid[tid] = thread[1]
            st.unnamed = tid not in self.tgid
        hit = st.accs.get(value)
        if hit is None:
            hit = self._keyed(st, tid, value, ts)
        key, acc = hit
        prev = st.start
        if prev is not None:
            self._unfinished(prev)
            guest = 0
        else:
            last = st.entry_ts
            guest = ts - last if last else 0
        st.entry_ts = 0
        start = st.start = [ts, key, 0, thread[2], self._extras, acc, guest, None]
        if len(value) > 2:
            start.append(value[2])  # the kvm_exit payload, for the slow-exit log

    def _keyed(self, st: ThreadState, tid: int, value: Tuple[int, int], ts: int) -> Tuple[Tuple[int, int, int], list]:
        """The key and accumulator of a thread's exit of reason ``value`` (kept in its state; the
        slow-exit log's values carry the payload: their reason is the first two items)."""
        if self.first_ns is None:  # the trace's first exit: no key is kept yet
            self.first_ns = ts
        reason = (value[0], value[1])
        hit = st.accs.get(reason)
        if hit is None:
            key = (tid, value[0], value[1])
            hit = st.accs[reason] = (key, self._acc(key))
        return hit

    def entry(self, ts: int, thread: Thread, value: Any = None) -> None:
        tid = thread[0]
        st = self.slots.get(tid)
        if st is None or st.start is None:
            if st is None and self.deferring and tid not in self.known:  # (as in exit)
                self._defer_entry(ts, thread)
                return
            self.last_ns = ts
            if self.first_ns is None:
                self.first_ns = ts
            if st is not None and st.entry_ts is not None:
                st.entry_ts = ts
            self.unpaired_entries += 1
            return
        self.last_ns = ts
        s = st.start
        st.start = None
        st.entry_ts = ts
        # Whether the split's events are known to be traced: then every pair is split (and clamped).
        splitting = self.switches or self.userspace_exits or self._split_recorded
        if self.deferring and s[S_HALT] and not splitting:
            self._note_unclamped(ts, s)
        acc = s[S_ACC]
        pending = acc[A_PENDING]
        if not pending:
            self._dirty.append(acc)
        pending.append(ts - s[S_TS])
        parts = None
        if s[S_SPLIT] is not None or splitting:
            halt, pre, blk, vmm = (s[S_SPLIT] or Split()).close(ts, max(ts - s[S_TS], 0), s[S_HALT])
            s[S_HALT] = halt
            parts = (pre, blk, vmm)
        if s[S_HALT]:
            acc[A_HALT] += s[S_HALT]
        if parts is not None:
            _add_parts(acc, s[S_GUEST], parts)
        elif s[S_GUEST]:
            acc[A_GUEST] += s[S_GUEST]
        if s[S_SUBS] is not None:
            self._pair_extras(s, max(ts - s[S_TS], 0), parts)

    def _defer_exit(self, ts: int, thread: Thread, value: Tuple[int, int]) -> None:
        raise NotImplementedError  # RangePairer's

    def _defer_entry(self, ts: int, thread: Thread) -> None:
        raise NotImplementedError  # RangePairer's

    def _note_unclamped(self, ts: int, s: list) -> None:
        raise NotImplementedError  # RangePairer's

    def _pair_extras(self, s: list, d: int, parts: Optional[Tuple[int, int, int]] = None) -> None:
        """What only some pairs need: their sub-reason, their time bin."""
        key = s[S_KEY]
        sub = 0
        if s[S_SUBS]:
            sub = self._sub(key, s[S_SUBS])
            if sub:
                skey = (*key, sub)
                acc = self.sub_stats.get(skey)
                if acc is None:
                    acc = self.sub_stats[skey] = new_acc()
                acc[A_PENDING].append(d)
                acc[A_HALT] += s[S_HALT]
                _add_parts(acc, s[S_GUEST], parts)
                add_pending(acc)
        if self.time_bins is not None:
            self.time_bins.pair(s[S_TS], key[1], key[2], d)
        if self._slow is not None and d > self._slow.threshold_ns:  # model.is_slower
            self._slow.pair(self, s, d, sub, parts)

    def flush(self) -> None:
        """Add the pending pairs to the statistics (:data:`A_PENDING`); every read of them does."""
        for acc in self._dirty:
            self.health.negative += add_pending(acc)
        self._dirty = []

    def trap(self, ts: int, thread: Thread, esr_ec: int) -> None:
        # Only where kvm_exit has no class (openEuler 5.10); elsewhere (openEuler 4.19) kvm_exit
        # already carries it and kvm_trap_enter is redundant, as on the BPF side. Without a
        # decoder no exit has been seen, so there is nothing to name anyway.
        if self.decoder is None or not self.decoder.trap_sets_class:
            return
        s = self.open_exit(thread[0])
        if s is not None:
            t, code, detail = s[S_KEY]
            if code == _TRAP:
                s[S_KEY] = key = (t, code, (detail & _SERROR) | (esr_ec & 0x3F))
                s[S_ACC] = self._acc(key)

    def wakeup(self, ts: int, thread: Thread, ns: int) -> None:
        self.wakeups += 1
        s = self.open_exit(thread[0])
        if s is not None:
            s[S_HALT] += ns
            if s[S_SPLIT] is not None:
                s[S_SPLIT].halt(ts, ns)

    def thread_exit(self, ts: int, thread: Thread, value: Any = None) -> None:
        """``sched_process_exit`` of the thread: its open exit, if any, will never see its entry."""
        st = self.slots.pop(thread[0], None)  # nothing open, no entry kept
        s = st.start if st is not None else None
        if s is not None:
            self.abandoned[s[S_KEY]] = self.abandoned.get(s[S_KEY], 0) + 1
            s[S_ACC][A_GUEST] += s[S_GUEST]
            skey = self._sub_key(s)
            if skey is not None:
                self.abandoned_subs[skey] = self.abandoned_subs.get(skey, 0) + 1
                if s[S_GUEST]:  # its sub-reason's row too, as an unfinished exit's (the rows add up)
                    acc = self.sub_stats.get(skey)
                    if acc is None:
                        acc = self.sub_stats[skey] = new_acc()
                    acc[A_GUEST] += s[S_GUEST]

    def userspace_exit(self, ts: int, thread: Thread, record: SubEvent) -> None:
        """``kvm_userspace_exit``: a sub-reason event, and the start of a VMM window (the split)."""
        self.sub_event(ts, thread, record)
        self.userspace_exits += 1
        s = self.open_exit(thread[0])
        if s is not None:
            if s[S_SPLIT] is None:
                s[S_SPLIT] = Split()
            s[S_SPLIT].uexit(ts)

    def switch(self, ts: int, thread: Thread, sw: Switch) -> None:
        """``sched_switch``: a thread with an exit open goes off CPU, or one comes back on. Runs
        for every thread's line, whatever -p/-t keep (the reader), as the kernel's program does."""
        self.switches += 1
        s = self.open_exit(sw.prev)
        if s is not None:
            if s[S_SPLIT] is None:
                s[S_SPLIT] = Split()
            s[S_SPLIT].off_ts = ts
            s[S_SPLIT].runnable = sw.runnable
            self.off_cpu[sw.prev] = ts
        if self.off_cpu.pop(sw.next, None) is not None:
            s = self.open_exit(sw.next)
            if s is not None and s[S_SPLIT] is not None and s[S_SPLIT].off_ts:
                s[S_SPLIT].back_on_cpu(ts)

    def sub_event(self, ts: int, thread: Thread, record: SubEvent) -> None:
        """A sub-reason event inside the thread's open exit (outside one it says nothing)."""
        self.sub_events += 1
        s = self.open_exit(thread[0])
        if s is not None:
            if not s[S_SUBS]:
                s[S_SUBS] = [record]
            elif len(s[S_SUBS]) < MAX_SUB_RECORDS:
                s[S_SUBS].append(record)

    def lost(self, cpu: int, n: Optional[int]) -> None:
        """A gap in ``cpu``'s events: close the open exits that started there as unfinished."""
        self.health.add_lost(cpu, n)
        self._close_on(cpu)

    def _close_on(self, cpu: int) -> None:
        """Open exits that started on ``cpu`` are closed as unfinished (a loss there)."""
        for tid, st in self.slots.items():
            s = st.start
            if s is not None and s[S_CPU] == cpu:
                st.start = None
                self._unfinished(s)
                self.health.reset_by_loss += 1
                self.health.reset_threads[tid] = self.health.reset_threads.get(tid, 0) + 1

    def _state(self, tid: int) -> ThreadState:
        st = self.slots.get(tid)
        if st is None:
            st = self.slots[tid] = ThreadState()
        return st

    def open_exit(self, tid: int) -> Optional[list]:
        """The thread's open exit (its start record), None when nothing is open."""
        st = self.slots.get(tid)
        return st.start if st is not None else None

    def open_exits(self) -> Dict[int, list]:
        """tid -> start record of every open exit."""
        return {tid: st.start for tid, st in self.slots.items() if st.start is not None}

    def _acc(self, key: Tuple[int, int, int]) -> list:
        acc = self.stats.get(key)
        if acc is None:
            acc = self.stats[key] = new_acc()
        return acc

    def _sub_key(self, s: list) -> Optional[Tuple[int, int, int, int]]:
        """(tid, code, detail, sub) of an open exit whose events give it a sub-reason, else None."""
        if not s[S_SUBS]:
            return None
        sub = self._sub(s[S_KEY], s[S_SUBS])
        return (*s[S_KEY], sub) if sub else None

    def _unfinished(self, s: list) -> None:
        """An open exit followed by another exit (or a gap): unfinished, under its sub-reason too;
        its guest time is charged now (as the kernel side does)."""
        s[S_ACC][A_UNFIN] += 1
        s[S_ACC][A_GUEST] += s[S_GUEST]
        skey = self._sub_key(s)
        if skey is not None:
            acc = self.sub_stats.get(skey)
            if acc is None:
                acc = self.sub_stats[skey] = new_acc()
            acc[A_UNFIN] += 1
            acc[A_GUEST] += s[S_GUEST]

    def _sub(self, key: Tuple[int, int, int], records: List[SubEvent]) -> int:
        """The sub-reason of a closed exit from the sub-reason events inside it (0: none)."""
        _, code, detail = key
        if self.decoder is not None and self.decoder.arch == ARCH_X86:
            return exit_sub_x86(label(ARCH_X86, code, detail), records)
        return exit_sub_arm64(detail & 0x3F, records) if code == _TRAP else 0

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
        self.flush()
        names = names or {}
        tgids = tgids or {}
        acc_by_key: Dict[Tuple[int, int, int], list] = {k: list(v) for k, v in self.stats.items()}
        opens: Dict[Tuple[int, int, int], int] = {}
        open_exits = self.open_exits().values()
        for s in open_exits:
            opens[s[S_KEY]] = opens.get(s[S_KEY], 0) + 1
        stats: Dict[ExitKey, ExitStats] = {}
        for key in set(acc_by_key) | set(opens) | set(self.abandoned):
            tid, code, detail = key
            acc = acc_by_key.get(key) or new_acc()
            tgid = self.tgid.get(tid, tgids.get(tid))
            ek = ExitKey(tgid, tid, code, detail)
            st = acc_stats(acc, opens.get(key, 0), self.abandoned.get(key, 0))
            if not st.exits:
                continue  # the first key of an exit that kvm_trap_enter renamed
            stats[ek] = stats[ek].merge(st) if ek in stats else st
        sub_opens: Dict[Tuple[int, int, int, int], int] = {}
        for s in open_exits:
            skey = self._sub_key(s)
            if skey is not None:
                sub_opens[skey] = sub_opens.get(skey, 0) + 1
        subs: Dict[SubKey, ExitStats] = {}
        for skey in set(self.sub_stats) | set(sub_opens) | set(self.abandoned_subs):
            tid, code, detail, sub = skey
            acc = self.sub_stats.get(skey) or new_acc()
            sk = SubKey(self.tgid.get(tid, tgids.get(tid)), tid, code, detail, sub)
            st = acc_stats(acc, sub_opens.get(skey, 0), self.abandoned_subs.get(skey, 0))
            subs[sk] = subs[sk].merge(st) if sk in subs else st
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
            halt_known=self.traced("kvm_vcpu_wakeup"),  # without its events, halt time is unknown
            subs=subs,
            subs_known=self.sub_events > 0,  # a trace without sub-reason events: unknown
            unknown=self.unknown(),
        )

    def traced(self, event: str) -> bool:
        """Whether the trace has ``event`` (one of the split's or kvm_vcpu_wakeup), so far: its
        recorder said it enabled it, or a line of it has been read."""
        seen = {"sched_switch": self.switches, "kvm_userspace_exit": self.userspace_exits}.get(event)
        if seen is None:
            seen = self.wakeups if event == "kvm_vcpu_wakeup" else 0
        return seen > 0 or event in self.recorded

    def unknown(self) -> FrozenSet[str]:
        """The split's parts whose events the trace lacks (guest time is always known here)."""
        out = set()
        if not self.traced("kvm_userspace_exit"):
            out.add("vmm_ns")
        if not self.traced("sched_switch"):
            out.update(("preempt_ns", "blocked_ns"))
        return frozenset(out)


def _add_parts(acc: list, guest: int, parts: Optional[Tuple[int, int, int]]) -> None:
    """Guest time and the split's (preempted, blocked, VMM) parts of a pair, as add_parts does."""
    acc[A_GUEST] += guest
    if parts is not None:
        acc[A_PREEMPT] += parts[0]
        acc[A_BLOCKED] += parts[1]
        acc[A_VMM] += parts[2]


def _vcpu(comm: str) -> Optional[int]:
    from ...names import vcpu_from_comm

    return vcpu_from_comm(comm)
