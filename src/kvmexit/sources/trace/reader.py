"""Streaming reader: text trace in, :class:`~kvmexit.model.Snapshot` out.

The file is read line by line and never held in memory: memory grows with the number of threads
and distinct exit reasons, not with the length of the trace. Every line is accounted for as a kvm
event, a known non-kvm line (other events, headers, loss markers) or a malformed line.

The hot loop inlines :meth:`Pairer.exit` and :meth:`Pairer.entry` (same state, same rules; the
tests check both paths agree): one compiled regex per line, ``int`` on the numbers that are
needed, and a cache from the printed reason to ``(code, detail)``.
"""

from __future__ import annotations

import itertools
import json
import lzma
import os
import re
from dataclasses import dataclass
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional, Tuple

from ...errors import BadTrace, KvmexitError
from ...layouts import detect as detect_layout_from_formats
from ...model import HIST_SUB, HIST_SUB_BITS, Snapshot, ThreadInfo
from ...names import vcpu_from_comm
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
    head_lines,
    open_input,
)
from .pairing import (
    A_HALT,
    A_HIST,
    A_MAX,
    A_MIN,
    A_PAIRS,
    A_SUMSQ,
    A_TOTAL,
    A_UNFIN,
    LAST_SLOT,
    Pairer,
    TraceHealth,
    new_acc,
)
from .timebins import TimeBins

__all__ = ["TraceInfo", "TraceResult", "read_trace", "read_stream", "load_names", "NAMES_SUFFIX"]

NAMES_SUFFIX = ".names.json"
_RECORD_HEADER = re.compile(rb"^# kvmexit record: layout=(\S+)")

#: ns per unit for a timestamp fraction of n digits (0 digits: a raw counter, taken as ns).
_SCALE = tuple([1] + [10 ** (9 - n) for n in range(1, MAX_FRACTION + 1)])


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
) -> TraceResult:
    """Read a trace file (``-`` for stdin; gzip/xz transparently) into a snapshot.

    ``time_bins``, if given, also receives every pair by time (for heatmaps; off by default).
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
    stream, compression = open_input(path)
    try:
        result = read_stream(stream, fmt=fmt, layout=layout, tids=tids, tgids=tgids, names=names, time_bins=time_bins)
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
) -> TraceResult:
    """Read an uncompressed binary line stream (see :func:`read_trace`).

    A line longer than ``max_line`` bytes is counted as malformed (memory stays bounded).
    """
    if fmt is not None and fmt not in FORMATS:
        raise BadTrace("unknown format %r" % fmt)
    if layout is not None:
        arch_of(layout)  # validates
    reader = LineReader(stream, max_line=max_line)
    lines = iter(reader)
    head = head_lines(lines)
    if fmt is None:
        fmt = detect_format(head) or "ftrace"
    rx = GRAMMARS[fmt]
    order = tuple(rx.groupindex[g] for g in GROUPS)
    if layout is None and names is not None and names.layout:
        layout = names.layout
    if layout is None:
        for line in head[:5]:
            m = _RECORD_HEADER.match(line)
            if m is not None and m.group(1).decode() in LAYOUTS:
                layout = m.group(1).decode()  # written by kvmexit record
    if layout is None:
        samples: List[Tuple[bytes, bytes]] = []
        for line in head:
            m = rx.match(line)
            if m is not None:
                samples.append((m.group("event"), m.group("payload")))
        layout = detect_layout(samples)
    pairer = Pairer()
    decoder = Decoder(layout) if layout is not None else None
    decoder = _loop(
        itertools.chain(head, lines), rx, order, decoder, pairer, set(tids), set(tgids), names, fmt, time_bins
    )
    h = pairer.health
    h.truncated = reader.truncated
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
    lines: Iterator[bytes],
    rx: Any,
    order: Tuple[int, ...],
    decoder: Optional[Decoder],
    pairer: Pairer,
    tids: set,
    tgids: set,
    names: Optional[Names],
    fmt: str = "ftrace",
    time_bins: Optional[TimeBins] = None,
) -> Optional[Decoder]:
    """The hot loop. Returns the decoder (created on the first exit when the head had none).

    Fast path: ``line.split(b": ", 2)`` gives ``prefix, event, payload``; the prefix up to the
    timestamp (comm, tid, tgid, CPU, flags) is looked up in a cache filled only from lines the
    format's full grammar matched with the same split, so a fast-path line is exactly a line the
    grammar accepts. Anything else goes through the grammar (and, failing it, is classified).
    """
    match = rx.match
    bin_pair = time_bins.pair if time_bins is not None else None
    sys_group = rx.groupindex.get("sys")
    starts = pairer.starts
    starts_get = starts.get
    starts_pop = starts.pop
    stats = pairer.stats
    stats_get = stats.get
    comm_of = pairer.comm
    tgid_of = pairer.tgid
    health = pairer.health
    scale = _SCALE
    sub_bits1, sub_mask = HIST_SUB_BITS + 1, HIST_SUB - 1
    side_tgid = names.tgid_of if names is not None else {}
    filtering = bool(tids or tgids)
    dec_exit = decoder.exit if decoder is not None else None
    sysp = b"kvm:" if fmt == "perf" else b""
    E_EXIT, E_ENTRY = sysp + b"kvm_exit", sysp + b"kvm_entry"
    E_WAKE, E_TRAP = sysp + b"kvm_vcpu_wakeup", sysp + b"kvm_trap_enter"
    # A thread's death: its open exit is abandoned (pairing.Pairer.thread_exit). Not a kvm event.
    E_GONE = (b"sched:" if fmt == "perf" else b"") + b"sched_process_exit"
    heads: Dict[bytes, tuple] = {}
    heads_get = heads.get
    n = n_exit = n_entry = n_other = n_ignored = n_filtered = unpaired = negative = 0
    first_ns: Optional[int] = None
    last_ns = 0

    def grammar(line: bytes, parts: list) -> Optional[tuple]:
        """The full grammar: ``(info, event, payload, digits, frac)``, or ``None`` when the line is
        not a kvm event (it is then counted here as other event, ignored or malformed)."""
        nonlocal n_ignored, n_other
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
        if ev != E_ENTRY and ev != E_EXIT and ev != E_WAKE and ev != E_TRAP and ev != E_GONE:
            n_other += 1
            return None
        tid = int(tid_b)
        tgid = int(tgid_b) if tgid_b is not None and tgid_b[:1] != b"-" else None
        info = (
            tid,
            tgid,
            int(cpu_b),
            comm.strip().decode("utf-8", "replace"),
            not filtering or _wanted(tid, tgid, tids, tgids, side_tgid),
        )
        if len(parts) == 3 and parts[1] == ev and m.end("frac") == len(parts[0]) and len(heads) < 100000:
            prefix = parts[0]
            i = prefix.rfind(b" ")
            if m.start("sec") == i + 1:
                heads[prefix[:i]] = info
        return info, ev, payload, sec + frac, frac

    for line in lines:
        n += 1
        parts = line.split(b": ", 2)
        info = None
        if len(parts) == 3:
            prefix, ev, payload = parts
            i = prefix.rfind(b" ")
            info = heads_get(prefix[:i])
            if info is not None:
                sec, _, frac = prefix[i + 1 :].partition(b".")
                digits = sec + frac
                # The grammar's bounds: 1-20 digits of seconds, at most 9 of fraction.
                if not (0 < len(sec) <= MAX_DIGITS and len(frac) <= MAX_FRACTION and digits.isdigit()):
                    info = None
        if info is None or (ev != E_ENTRY and ev != E_EXIT and ev != E_WAKE and ev != E_TRAP and ev != E_GONE):
            g = grammar(line, parts)
            if g is None:
                continue
            info, ev, payload, digits, frac = g
        tid = info[0]
        if ev == E_ENTRY:
            if not info[4]:
                n_filtered += 1
                continue
            ts = int(digits) * scale[len(frac)]
            n_entry += 1
            last_ns = ts
            if first_ns is None:
                first_ns = ts
            s = starts_pop(tid, None)
            if s is None:
                unpaired += 1
                continue
            d = ts - s[0]
            if d < 0:
                negative += 1
                d = 0
            key = s[1]
            acc = stats_get(key)
            if acc is None:
                acc = stats[key] = new_acc()
            acc[A_PAIRS] += 1
            acc[A_TOTAL] += d
            acc[A_HALT] += s[2]
            if d < acc[A_MIN]:
                acc[A_MIN] = d
            if d > acc[A_MAX]:
                acc[A_MAX] = d
            acc[A_SUMSQ][0] += d * d
            if d < HIST_SUB:  # model.hist_slot, inlined
                acc[A_HIST][d] += 1
            else:
                shift = d.bit_length() - sub_bits1
                slot = HIST_SUB * (shift + 1) + ((d >> shift) & sub_mask)
                acc[A_HIST][slot if slot < LAST_SLOT else LAST_SLOT] += 1
            if bin_pair is not None:
                bin_pair(s[0], key[1], key[2], d)
        elif ev == E_EXIT:
            if dec_exit is None:
                layout = detect_layout([(b"kvm_exit", payload.strip())])
                if layout is None:
                    health.note_malformed(n)
                    continue
                decoder = Decoder(layout)
                dec_exit = decoder.exit
            if payload[:1] == b" ":
                payload = payload.lstrip()  # trace-cmd pads it
            val = dec_exit(payload)
            if val is None:
                health.note_malformed(n)
                continue
            if not info[4]:
                n_filtered += 1
                continue
            ts = int(digits) * scale[len(frac)]
            n_exit += 1
            last_ns = ts
            if first_ns is None:
                first_ns = ts
            if tid not in comm_of:
                comm_of[tid] = info[3]
            if info[1] is not None and tid not in tgid_of:
                tgid_of[tid] = info[1]
            prev = starts_get(tid)
            if prev is not None:
                pk = prev[1]
                acc = stats_get(pk)
                if acc is None:
                    acc = stats[pk] = new_acc()
                acc[A_UNFIN] += 1
            starts[tid] = [ts, (tid, val[0], val[1]), 0, info[2]]
        elif ev == E_GONE:
            n_other += 1  # not a kvm event: a trace of thread exits alone is still no KVM trace
            if info[4] and tid in starts:
                pairer.thread_exit(tid)
        else:
            if ev == E_TRAP:
                ec = (decoder or Decoder("arm64-openeuler-5.10")).trap(payload)
                if ec is None:
                    health.note_malformed(n)
                    continue
                if not info[4]:
                    n_filtered += 1
                    continue
                # Only where kvm_exit has no class (openEuler 5.10); elsewhere (openEuler 4.19)
                # kvm_exit already carries it and kvm_trap_enter is redundant, as on the BPF side.
                # Without a decoder no exit has been seen, so there is nothing to name anyway.
                if decoder is not None and decoder.trap_sets_class:
                    pairer.trap(tid, ec)
            else:
                ns = Decoder.wakeup(payload)
                if ns is None:
                    health.note_malformed(n)
                    continue
                if not info[4]:
                    n_filtered += 1
                    continue
                pairer.wakeup(tid, ns)
            health.events += 1
    pairer.unpaired_entries += unpaired
    health.negative += negative
    health.lines += n
    health.events += n_exit + n_entry
    health.other_events += n_other
    health.ignored += n_ignored + n_filtered
    health.filtered += n_filtered
    pairer.first_ns = first_ns
    pairer.last_ns = last_ns
    return decoder


def _wanted(tid: int, tgid: Optional[int], tids: set, tgids: set, side_tgid: Dict[int, int]) -> bool:
    if tids and tid not in tids:
        return False
    if tgids:
        if tgid is None:
            tgid = side_tgid.get(tid)
        if tgid not in tgids:
            return False
    return True
