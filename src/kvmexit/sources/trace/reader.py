"""Streaming reader: text trace in, :class:`~kvmexit.model.Snapshot` out.

The file is read line by line and never held in memory: memory grows with the number of threads
and distinct exit reasons, not with the length of the trace. Every line is accounted for as a kvm
event, a known non-kvm line (other events, headers, loss markers) or a malformed line.

Each line is parsed here (a cached prefix, or one compiled regex) and its event handed to the
pairing engine, :class:`.pairing.Pairer`, through its dispatch table (:data:`.pairing.EVENTS`).
"""

from __future__ import annotations

import itertools
import json
import lzma
import os
import re
from dataclasses import dataclass
from operator import length_hint
from typing import IO, Any, Dict, FrozenSet, Iterable, List, Optional, Tuple

from ...errors import BadTrace, KvmexitError
from ...layouts import detect as detect_layout_from_formats
from ...model import Snapshot, ThreadInfo, paused_gc
from ...names import vcpu_from_comm
from .. import Source
from .decode import LAYOUTS, Decoder, arch_of, detect_layout
from .formats import (
    FORMATS,
    GRAMMARS,
    GROUPS,
    MAX_DIGITS,
    MAX_FRACTION,
    MAX_LINE,
    TOO_LONG,
    LineReader,
    classify_other,
    detect_format,
    open_input,
    split_head,
)
from .pairing import Pairer, Thread, TraceHealth
from .slow import SlowLog
from .timebins import TimeBins

__all__ = ["TraceInfo", "TraceResult", "TraceSource", "read_trace", "read_stream", "load_names", "NAMES_SUFFIX"]

NAMES_SUFFIX = ".names.json"
_RECORD_HEADER = re.compile(rb"^# kvmexit record: layout=(\S+)")
#: The header's list of the events kvmexit record enabled (``kvm_exit,...,sched:sched_switch``).
_RECORD_EVENTS = re.compile(rb" events=(\S*)")

#: Lines between two additions of the pending pairs (:meth:`Pairer.flush`): at most that many
#: durations wait in lists (a few hundred KB); fewer additions of longer lists cost less.
_FLUSH_LINES = 32768

#: ns per unit for a timestamp fraction of n digits (0 digits: a raw counter, taken as ns).
_SCALE = tuple([1] + [10 ** (9 - n) for n in range(1, MAX_FRACTION + 1)])

#: Entries of the reader's prefix cache: it holds one per thread, CPU and second of the trace,
#: and is emptied when full (memory stays bounded; the grammar fills it again). Also the most
#: names of other events it learns.
_HEADS_MAX = 1 << 14


def _count_other(ts: int, thread: Thread, value: Any) -> None:
    """The rule of events not in the engine's table: none (the reader counts them)."""


#: The handler of an event the engine has no rule for: it is counted as another event.
_OTHER = (None, _count_other, False)


@dataclass
class TraceInfo:
    path: str
    format: str
    layout: str
    arch: str
    compression: Optional[str] = None
    names_file: Optional[str] = None
    #: Wall-clock time (Unix seconds) the recording ended: from the names file of kvmexit record,
    #: else the file's modification time; None on standard input.
    ended: Optional[float] = None
    #: ``uname -r`` of the traced host, when the names file says.
    kernel: Optional[str] = None

    def source(self) -> Dict[str, Any]:
        """The ``source`` object of JSON reports."""
        return {
            "kind": "trace",
            "path": self.path,
            "format": self.format,
            "layout": self.layout,
            "arch": self.arch,
            "compression": self.compression,
            "names": self.names_file,
            "kernel": self.kernel,
        }


@dataclass
class TraceResult:
    snapshot: Snapshot
    info: TraceInfo
    health: TraceHealth


@dataclass
class Names:
    """What ``kvmexit record`` saved next to the trace (all optional)."""

    layout: Optional[str] = None
    tgid_of: Dict[int, int] = None  # type: ignore[assignment]
    vm_of: Dict[int, str] = None  # type: ignore[assignment]
    threads: Dict[int, ThreadInfo] = None  # type: ignore[assignment]
    #: CPU -> per_cpu stats with overrun/dropped events at the end of the recording.
    lost: Dict[int, Dict[str, int]] = None  # type: ignore[assignment]
    #: Wall-clock end of the recording (Unix seconds), when the recorder wrote it.
    ended: Optional[float] = None
    kernel: Optional[str] = None

    def __post_init__(self) -> None:
        self.lost = self.lost or {}
        self.tgid_of = self.tgid_of or {}
        self.vm_of = self.vm_of or {}
        self.threads = self.threads or {}


#: A names file is a few MB on a busy host; anything far larger is not one (and would be held whole).
NAMES_MAX_BYTES = 256 << 20
_U64 = 1 << 64


class _BadNames(Exception):
    pass


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _mapping(value: Any, where: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _BadNames("%s: not an object" % where)
    return value


def _number(value: Any, where: str) -> int:
    """A non-negative integer below 2**64 (JSON ``1e400`` is a float, ``true`` is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _U64:
        raise _BadNames("%s: %s is not an integer from 0 to 2**64-1" % (where, _short(value)))
    return value


def _key(key: str, where: str) -> int:
    if not (0 < len(key) <= MAX_DIGITS and key.isdigit() and key.isascii()):
        raise _BadNames("%s: key %s is not a number" % (where, _short(key)))
    return int(key)


def _text(value: Any, where: str) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise _BadNames("%s: %s is not a string" % (where, _short(value)))
    return value


def load_names(path: str) -> Names:
    """Read a names side file (``FILE.names.json``).

    Content is checked field by field: anything unexpected (not JSON, a wrong type, a number out of
    range, nesting too deep, format files that name no known layout) raises :class:`BadTrace` with
    one line naming the field; nothing is half-used.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(NAMES_MAX_BYTES + 1)
    except OSError as e:
        raise BadTrace("cannot read names file %s: %s" % (path, e.strerror)) from e
    try:
        if len(raw) > NAMES_MAX_BYTES:
            raise _BadNames("larger than %d MiB" % (NAMES_MAX_BYTES >> 20))
        try:
            doc = json.loads(raw, parse_constant=_no_constant)
        except RecursionError:
            raise _BadNames("nested too deeply") from None
        except ValueError as e:
            raise _BadNames("not JSON: %s" % e) from None
        return _names_from(_mapping(doc, "document"))
    except _BadNames as e:
        raise BadTrace(
            "bad names file %s: %s" % (path, e), hint="fix or remove it, or ignore it with --no-names"
        ) from None


def _no_constant(name: str) -> Any:
    raise ValueError("%s is not a JSON number" % name)


def _names_from(doc: Dict[str, Any]) -> Names:
    vm_of: Dict[int, str] = {}
    for k, v in _mapping(doc.get("vms"), "vms").items():
        name = _text(v, "vms." + k)
        tgid = _key(k, "vms")
        if name is not None:
            vm_of[tgid] = name
    tgid_of: Dict[int, int] = {}
    threads: Dict[int, ThreadInfo] = {}
    for k, t in _mapping(doc.get("threads"), "threads").items():
        where = "threads." + k
        tid = _key(k, "threads")
        t = _mapping(t, where)
        if t.get("tgid") is not None:
            tgid_of[tid] = _number(t["tgid"], where + ".tgid")
        comm = _text(t.get("comm"), where + ".comm") or ""
        vcpu = t.get("vcpu")
        threads[tid] = ThreadInfo(
            comm=comm,
            vm=vm_of.get(tgid_of.get(tid, -1)),
            vcpu=_number(vcpu, where + ".vcpu") if vcpu is not None else vcpu_from_comm(comm),
        )
    layout = _text(doc.get("layout"), "layout")
    if layout is not None and layout not in LAYOUTS:
        raise _BadNames("layout: unknown %s" % _short(layout))
    formats = _mapping(doc.get("formats"), "formats")
    if layout is None and formats:
        for k, v in formats.items():
            _text(v, "formats." + k)
        try:
            layout = detect_layout_from_formats(formats).name
        except KvmexitError as e:
            raise _BadNames("its kvm format files name no known layout (%s)" % e) from None
    lost: Dict[int, Dict[str, int]] = {}
    for c, st in _mapping(doc.get("lost"), "lost").items():
        lost[_key(c, "lost")] = {
            name: _number(v, "lost.%s.%s" % (c, name)) for name, v in _mapping(st, "lost." + c).items()
        }
    ended = doc.get("ended")
    if ended is not None and (isinstance(ended, bool) or not isinstance(ended, (int, float)) or not 0 <= ended < 1e11):
        raise _BadNames("ended: %s is not a time in Unix seconds" % _short(ended))
    kernel = _text(doc.get("kernel"), "kernel")
    return Names(layout=layout, tgid_of=tgid_of, vm_of=vm_of, threads=threads, lost=lost, ended=ended, kernel=kernel)


def read_trace(
    path: str,
    fmt: Optional[str] = None,
    layout: Optional[str] = None,
    tids: Iterable[int] = (),
    tgids: Iterable[int] = (),
    names_path: Optional[str] = None,
    use_names: bool = True,
    display_path: Optional[str] = None,
    time_bins: Optional[TimeBins] = None,
    slow: Optional[SlowLog] = None,
    jobs: Optional[int] = 1,
    offsets: Optional[List[int]] = None,
) -> TraceResult:
    """Read a trace file (``-`` for stdin; gzip/xz transparently) into a snapshot.

    ``jobs``: processes to read a plain file in (:mod:`.parallel`; the same result), ``None`` for
    the usable CPUs when the file is large enough; standard input, compressed files and the
    ``time_bins``/``slow`` outputs are read in this process only. ``offsets``: where to cut the
    file (at the next line start; tests), instead of evenly.

    ``time_bins``, if given, also receives every pair by time (for heatmaps; off by default).
    ``slow``, if given, receives every pair slower than its threshold as it is read.
    ``names_path`` defaults to ``path + ".names.json"`` when that file exists, or for a compressed
    ``FILE.gz``/``FILE.xz`` to ``FILE.names.json`` (``kvmexit record`` names it after the trace).
    """
    names: Optional[Names] = None
    if use_names:
        if names_path is None and path != "-":
            for base in (path, path[:-3] if path.endswith((".gz", ".xz")) else None):
                if base is not None and os.path.exists(base + NAMES_SUFFIX):
                    names_path = base + NAMES_SUFFIX
                    break
        if names_path is not None:
            names = load_names(names_path)
    if time_bins is None and slow is None and (jobs != 1 or offsets):
        result = _read_parallel(path, jobs, offsets, fmt, layout, tids, tgids, names)
        if result is not None:
            result.info.path = display_path or path
            result.info.names_file = names_path
            result.info.ended = names.ended if names is not None and names.ended is not None else _mtime(path)
            return result
    stream, compression = open_input(path)
    try:
        result = read_stream(
            stream, fmt=fmt, layout=layout, tids=tids, tgids=tgids, names=names, time_bins=time_bins, slow=slow
        )
    except (OSError, lzma.LZMAError) as e:
        raise BadTrace("%s: cannot read: %s" % (path, e)) from e
    finally:
        if stream is not None and path != "-":
            stream.close()
    result.info.path = display_path or path
    result.info.compression = compression
    result.info.names_file = names_path
    result.info.ended = names.ended if names is not None and names.ended is not None else _mtime(path)
    return result


def _read_parallel(
    path: str,
    jobs: Optional[int],
    offsets: Optional[List[int]],
    fmt: Optional[str],
    layout: Optional[str],
    tids: Iterable[int],
    tgids: Iterable[int],
    names: Optional[Names],
) -> Optional[TraceResult]:
    from . import parallel

    planned = parallel.plan(path, jobs, offsets)
    if planned is None:
        return None
    ranges, processes = planned
    try:
        got = parallel.read_parallel(path, ranges, fmt, layout, set(tids), set(tgids), names, processes=processes)
    except OSError as e:
        raise BadTrace("%s: cannot read: %s" % (path, e.strerror or e)) from e
    if got is None:
        return None
    pairer, fmt = got
    return finish(pairer, fmt, names)


class TraceSource(Source):
    """A trace file as a :class:`~kvmexit.sources.Source`: read and paired once, at the first
    :meth:`snapshot` (``options`` as :func:`read_trace`'s); :attr:`result` has what only a trace
    tells (its format, layout and health)."""

    def __init__(self, path: str, **options: Any) -> None:
        self.path = path
        self.options = options
        self._result: Optional[TraceResult] = None

    @property
    def result(self) -> TraceResult:
        if self._result is None:
            self._result = read_trace(self.path, **self.options)
        return self._result

    def snapshot(self) -> Snapshot:
        return self.result.snapshot

    def close(self) -> None:
        """Nothing stays open: the file is closed once it has been read."""


def _mtime(path: str) -> Optional[float]:
    if path == "-":
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def read_stream(
    stream: IO[bytes],
    fmt: Optional[str] = None,
    layout: Optional[str] = None,
    tids: Iterable[int] = (),
    tgids: Iterable[int] = (),
    names: Optional[Names] = None,
    max_line: int = MAX_LINE,
    time_bins: Optional[TimeBins] = None,
    engine: Optional[Pairer] = None,
    slow: Optional[SlowLog] = None,
) -> TraceResult:
    """Read an uncompressed binary line stream (see :func:`read_trace`).

    A line longer than ``max_line`` bytes is counted as malformed (memory stays bounded).
    ``engine``: a fresh :class:`Pairer` to pair with (so a caller can look at its state after);
    by default one made here.
    """
    check_options(fmt, layout)
    reader = LineReader(stream, max_line=max_line)
    batches = reader.batches()
    head, first = split_head(batches)
    fmt, layout, recorded = detect(head, fmt, layout, names)
    pairer = engine if engine is not None else Pairer()
    pairer.recorded = recorded
    if layout is not None and pairer.decoder is None:
        pairer.decoder = Decoder(layout)
    if time_bins is not None:
        pairer.time_bins = time_bins
    if slow is not None:
        slow.names = names
        pairer.slow = slow
    with paused_gc():  # the loop makes no cycles, only garbage the collector would rescan
        _loop(itertools.chain([first], batches), pairer, set(tids), set(tgids), names, fmt)
    pairer.health.truncated = reader.truncated
    return finish(pairer, fmt, names)


def check_options(fmt: Optional[str], layout: Optional[str]) -> None:
    """A forced format or layout must be a known one (BadTrace/UnsupportedLayout otherwise)."""
    if fmt is not None and fmt not in FORMATS:
        raise BadTrace("unknown format %r" % fmt)
    if layout is not None:
        arch_of(layout)  # validates


def detect(
    head: List[bytes], fmt: Optional[str], layout: Optional[str], names: Optional[Names]
) -> Tuple[str, Optional[str], FrozenSet[str]]:
    """The format and layout of a trace from its first lines (``head``), unless given: the layout
    from the names file, a ``kvmexit record`` header, else the first kvm_exit payloads (``None``
    when the head has none: the first exit of the trace decides); and the events the header says
    were recorded (:attr:`.pairing.Pairer.recorded`)."""
    if fmt is None:
        fmt = detect_format(head) or "ftrace"
    rx = GRAMMARS[fmt]
    if layout is None and names is not None and names.layout:
        layout = names.layout
    recorded: FrozenSet[str] = frozenset()
    for line in head[:5]:
        m = _RECORD_HEADER.match(line)
        if m is None:
            continue
        if layout is None and m.group(1).decode() in LAYOUTS:
            layout = m.group(1).decode()  # written by kvmexit record
        ev = _RECORD_EVENTS.search(line)
        if ev is not None:  # what it recorded: a part whose event it recorded is known from the start
            recorded = frozenset(e.rpartition(":")[2] for e in ev.group(1).decode("ascii", "replace").split(",") if e)
    if layout is None:
        samples: List[Tuple[bytes, bytes]] = []
        for line in head:
            m = rx.match(line)
            if m is not None:
                samples.append((m.group("event"), m.group("payload")))
        layout = detect_layout(samples)
    return fmt, layout, recorded


def finish(pairer: Pairer, fmt: str, names: Optional[Names]) -> TraceResult:
    """The result of a trace read by ``pairer`` (its health complete): the snapshot with the
    names file's threads and losses, or BadTrace for a trace without KVM events."""
    decoder = pairer.decoder
    h = pairer.health
    if h.events == 0 or decoder is None:
        raise BadTrace(
            "no KVM exit/entry events in this %s trace (%d lines: %d other events, %d ignored, %d malformed)%s"
            % (
                fmt,
                h.lines,
                h.other_events,
                h.ignored,
                h.malformed,
                "; compressed stream truncated: %s" % h.truncated if h.truncated else "",
            ),
            hint="trace the kvm:kvm_exit and kvm:kvm_entry events (kvmexit record)",
        )
    threads: Dict[int, ThreadInfo] = {}
    tgid_of: Dict[int, int] = {}
    if names is not None:
        tgid_of = names.tgid_of
        for tid in set(pairer.comm) | set(names.threads):
            side = names.threads.get(tid)
            tgid = pairer.tgid.get(tid, tgid_of.get(tid))
            vm = names.vm_of.get(tgid) if tgid is not None else None
            comm = pairer.comm.get(tid) or (side.comm if side else "")
            vcpu = side.vcpu if side is not None and side.vcpu is not None else vcpu_from_comm(comm)
            threads[tid] = ThreadInfo(comm=comm, vm=vm or (side.vm if side else None), vcpu=vcpu)
    snap = pairer.snapshot(decoder.arch, names=threads, tgids=tgid_of)
    if names is not None:
        for cpu, st in names.lost.items():
            n = st.get("overrun", 0) + st.get("dropped events", 0)
            if n:
                h.recorded_lost[cpu] = n
    info = TraceInfo(
        path="", format=fmt, layout=decoder.layout, arch=decoder.arch, kernel=names.kernel if names else None
    )
    return TraceResult(snapshot=snap, info=info, health=h)


def _loop(
    batches: Iterable[List[bytes]],
    pairer: Pairer,
    tids: set,
    tgids: set,
    names: Optional[Names],
    fmt: str = "ftrace",
) -> None:
    """The hot loop: each line is parsed, and its event dispatched to the engine (:data:`EVENTS`).

    Fast path: ``line.split(b": ", 2)`` gives ``prefix, event, payload``; the prefix up to and with
    the timestamp's dot (comm, tid, tgid, CPU, flags and the seconds) is looked up in a cache filled
    only from lines the format's full grammar matched with the same split, and the rest, its
    fraction, must be digits, as many as the cached line's (the trace's precision: lines printed
    with another go through the grammar), so a fast-path line is exactly a line the grammar
    accepts; the cache holds the seconds in ns, so only the fraction is converted. Timestamps without a dot
    (a raw counter clock) have a cache of their own, of the prefix up to the timestamp. An event
    the engine has no rule for takes the fast path too once the grammar has read its name with
    the same split (it is counted). Anything else goes through the grammar (and, failing it, is
    classified).
    The engine adds its pending pairs up every :data:`_FLUSH_LINES` lines or so (memory stays flat).
    """
    rx = GRAMMARS[fmt]
    order = tuple(rx.groupindex[g] for g in GROUPS)
    match = rx.match
    sys_group = rx.groupindex.get("sys")
    health = pairer.health
    handlers = pairer.handlers(fmt)
    #: The handlers by event name as the split gives it, and (_OTHER) the other events the
    #: grammar has read with that same split.
    events = dict(handlers)
    handler_of = events.get
    flush = pairer.flush
    scale = _SCALE
    side_tgid = names.tgid_of if names is not None else {}
    filtering = bool(tids or tgids)
    heads_max = _HEADS_MAX
    #: prefix up to and with the timestamp's dot -> (thread, the seconds in ns, ns per unit of the
    #: fraction); only prefixes whose fraction has ``-cut`` digits (the trace's precision: the first
    #: fraction the grammar reads) are cached, so the fast path cuts a prefix at a fixed place.
    heads: Dict[bytes, Tuple[Thread, int, int]] = {}
    heads_get = heads.get
    cut = 0  # (no fraction read yet: prefix[:0] is no key)
    #: prefix up to a timestamp without a dot -> thread
    raw_heads: Dict[bytes, Thread] = {}
    n = n_other = n_ignored = n_filtered = 0
    malformed_before = health.malformed

    def grammar(line: bytes, prefix: bytes, event: bytes, n: int) -> Optional[tuple]:
        """The full grammar: ``(thread, handler, payload, ts_ns)``, or ``None`` when the line is
        no event of the table (it is then counted here as other event, ignored or malformed).
        ``prefix``, ``event``: the line's split in three at ``": "`` (empty: it has fewer parts)."""
        nonlocal n_ignored, n_other, cut
        m = match(line)
        if m is None:
            kind, lost = classify_other(line)
            if kind == "lost" and lost is not None:
                n_ignored += 1
                pairer.lost(lost[0], lost[1])
            elif kind == "ignored":
                n_ignored += 1
            else:
                health.note_malformed(n)
                if line is TOO_LONG:
                    health.too_long += 1
            return None
        comm, tid_b, tgid_b, cpu_b, sec, frac, ev, payload = m.group(*order)
        if sys_group is not None:
            ev = m.group(sys_group) + b":" + ev
        handler = handlers.get(ev)
        tid = int(tid_b)
        tgid = int(tgid_b) if tgid_b is not None and tgid_b[:1] != b"-" else None
        thread = Thread(
            tid,
            tgid,
            int(cpu_b),
            comm.strip().decode("utf-8", "replace"),
            not filtering or _wanted(tid, tgid, tids, tgids, side_tgid),
        )
        # perf prints two spaces after the timestamp: its event part then starts with one.
        if heads_max and event in (ev, b" " + ev) and m.end("frac") == len(prefix):
            if handler is None and len(events) < heads_max:
                events[event] = _OTHER
            if frac:
                i = prefix.rfind(b".")
                if m.end("sec") == i and m.start("frac") == i + 1:
                    if not cut:
                        cut = -len(frac)
                    if len(frac) == -cut:
                        if len(heads) >= heads_max:
                            heads.clear()
                        heads[prefix[: i + 1]] = (thread, int(sec) * 1_000_000_000, scale[len(frac)])
            elif m.end("sec") == len(prefix):  # no dot
                i = prefix.rfind(b" ")
                if m.start("sec") == i + 1:
                    if len(raw_heads) >= heads_max:
                        raw_heads.clear()
                    raw_heads[prefix[:i]] = thread
        if handler is None:
            n_other += 1
            return None
        return thread, handler, payload, int(sec + frac) * scale[len(frac)]

    flushed = 0
    max_digits = MAX_DIGITS
    for batch in batches:
        done = n
        # A line's number is only needed off the fast path: it is found there from what the
        # batch's iterator has left (exact for a list), so the fast path does not count.
        lines = iter(batch)
        for line in lines:
            thread = None
            try:
                prefix, ev, payload = line.split(b": ", 2)
            except ValueError:
                prefix = ev = b""  # (no grammar match ends there: nothing is cached from it)
            else:
                handler = handler_of(ev)
                if handler is not None:
                    hit = heads_get(prefix[:cut])
                    if hit is not None:
                        # The cached prefix ends with the dot: the rest is the fraction, if digits.
                        frac = prefix[cut:]
                        if frac.isdigit():
                            thread, sec_ns, unit = hit
                            ts = sec_ns + int(frac) * unit
                    elif raw_heads:
                        head, _, stamp = prefix.rpartition(b" ")
                        thread = raw_heads.get(head)
                        # The grammar's bound: 1-20 digits.
                        if thread is not None and 0 < len(stamp) <= max_digits and stamp.isdigit():
                            ts = int(stamp)
                        else:
                            thread = None
            if thread is None:
                g = grammar(line, prefix, ev, done + len(batch) - length_hint(lines))
                if g is None:
                    continue
                thread, handler, payload, ts = g
            decode, rule, kvm = handler  # type: ignore[misc]
            if decode is None:
                value = None
            else:
                value = decode(payload)
                if value is None:
                    health.note_malformed(done + len(batch) - length_hint(lines))
                    continue
            if thread[4] or not kvm:  # other events: every thread's (a sched_switch names two)
                rule(ts, thread, value)
                if not kvm:
                    n_other += 1
            else:
                n_filtered += 1
        n = done + len(batch)
        if n - flushed >= _FLUSH_LINES:
            flush()
            flushed = n
    flush()
    health.lines += n
    # Every line is one of these; the kvm events used are what remains.
    health.events += n - n_other - n_ignored - n_filtered - (health.malformed - malformed_before)
    health.other_events += n_other
    health.ignored += n_ignored + n_filtered
    health.filtered += n_filtered


def _wanted(tid: int, tgid: Optional[int], tids: set, tgids: set, side_tgid: Dict[int, int]) -> bool:
    if tids and tid not in tids:
        return False
    if tgids:
        if tgid is None:
            tgid = side_tgid.get(tid)
        if tgid not in tgids:
            return False
    return True
