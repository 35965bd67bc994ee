"""Text trace formats: opening (plain, gzip, xz, stdin), detection, and the line grammars.

Three renderings of the same events are understood:

- ``ftrace``: ``/sys/kernel/tracing[/instances/X]/trace`` or ``trace_pipe``::

      CPU 0/KVM-1234    [001] d..1.  512.123456: kvm_exit: TRAP: HSR_EC: ...
      CPU 0/KVM-1234    (   1200) [001] d..1.  512.123456: kvm_exit: ...   (options/record-tgid)

  with or without the flags column (``irq-info``), any timestamp precision, loss markers
  ``CPU:N [LOST M EVENTS]`` and ``##### CPU N buffer started ####``;
- ``trace-cmd``: ``trace-cmd report``, the same shape with an optional ``BUFFER:`` prefix
  (instance buffers), a ``cpus=N`` header and ``CPU:N [M EVENTS DROPPED]`` markers;
- ``perf``: ``perf script``::

      CPU 0/KVM  1234 [001]  512.123456:  kvm:kvm_exit: reason ...
      CPU 0/KVM  1200/1234 [001]  512.123456789:  kvm:kvm_exit: ...        (-F +pid, --ns)

Every grammar has the same groups, in this order: comm, tid, tgid, cpu, seconds, fraction,
event, payload (:data:`GROUPS`).
"""

from __future__ import annotations

import gzip
import io
import itertools
import lzma
import re
import sys
from typing import IO, Iterable, Iterator, List, Optional, Pattern, Tuple

from ...errors import BadTrace

__all__ = [
    "FORMATS",
    "GRAMMARS",
    "GROUPS",
    "open_input",
    "detect_format",
    "classify_other",
    "LOST",
    "OTHER_IGNORED",
    "LineReader",
    "MAX_LINE",
    "MAX_DIGITS",
    "MAX_FRACTION",
    "TOO_LONG",
]

FORMATS = ("ftrace", "trace-cmd", "perf")

#: The longest digit run a number may have: 20 digits hold any u64. A longer run makes the line
#: malformed (so ``int`` never meets Python's 4,300-digit limit, nor a huge number).
MAX_DIGITS = 20
#: The most timestamp fraction digits: 9 is ns, the finest any tool prints.
MAX_FRACTION = 9


def _atomic(name: str, rx: bytes) -> bytes:
    """``rx`` matched atomically (never given back): Python 3.7 has no possessive quantifiers, but
    a lookahead does not backtrack, and a backreference then consumes exactly what it took."""
    return rb"(?=(?P<%s>%s))(?P=%s)" % (name.encode(), rx, name.encode())


# Linear time on any line: a whitespace run the regex engine could otherwise split between two
# quantifiers is consumed atomically (ftrace's leading run, before a comm that may hold anything),
# or the perf comm starts and ends at a non-space character (so each whitespace run is tried by
# one candidate comm only, and giving back its spaces fails at once); digit runs are bounded. A
# run of n spaces used to cost O(n**3) in the perf grammar. perf lines take this grammar every
# time (their ":  " defeats the reader's fast path), so it has no lookaheads to pay for.
_NUM = rb"\d{1,%d}" % MAX_DIGITS
_TS = rb"(?P<sec>%s)(?!\d)\.?(?P<frac>\d{0,%d}):" % (_NUM, MAX_FRACTION)
_FTRACE = (
    rb"^" + _atomic("_lead", rb"\s*") + rb"(?P<comm>.*?)-(?P<tid>" + _NUM + rb")\s+"
    rb"(?:\(\s*(?P<tgid>" + _NUM + rb"|-{1,%d})\)\s+)?\[(?P<cpu>" % MAX_DIGITS + _NUM + rb")\]\s+"
    rb"(?:[^\s\[\]]{4,6}\s+)?" + _TS + rb"\s+(?P<event>\w+):\s*(?P<payload>.*)"
)
_TRACECMD = rb"^(?:(?P<buffer>\S+): )?" + _FTRACE[1:]
_PERF = (
    rb"^\s*(?P<comm>\S(?:.*?\S)?)\s+(?:(?P<tgid>"
    + _NUM
    + rb")/)?(?P<tid>"
    + _NUM
    + rb")\s+\[(?P<cpu>"
    + _NUM
    + rb")\]\s+"
    + _TS
    + rb"\s+(?:"
    + _NUM
    + rb"\s+)?(?P<sys>\w+):(?P<event>\w+):\s*(?P<payload>.*)"
)

GROUPS = ("comm", "tid", "tgid", "cpu", "sec", "frac", "event", "payload")

GRAMMARS = {
    "ftrace": re.compile(_FTRACE),
    "trace-cmd": re.compile(_TRACECMD),
    "perf": re.compile(_PERF),
}

#: ``CPU:3 [LOST 12 EVENTS]`` (ftrace, trace-cmd), ``CPU:3 [12 EVENTS DROPPED]``,
#: ``CPU:3 [EVENTS DROPPED]`` (trace-cmd), ``##### CPU 3 buffer started ####`` (ftrace).
LOST = re.compile(
    rb"^(?:\S+: )?"
    + _atomic("_lead", rb"\s*")
    + rb"(?:CPU:\s*(?P<cpu>"
    + _NUM
    + rb")\s+\[(?:LOST\s+(?P<n>"
    + _NUM
    + rb")\s+EVENTS|(?P<n2>"
    + _NUM
    + rb"\s+)?EVENTS DROPPED)\]"
    rb"|#+ CPU (?P<cpu2>" + _NUM + rb") buffer started #+)\s*$"
)

#: Known lines that are not events: headers of the three tools.
OTHER_IGNORED = re.compile(
    rb"^"
    + _atomic("_lead", rb"\s*")
    + rb"(?:#.*|cpus=\d+|version\s*=\s*\d+.*|CPU\s*\d+ is empty|\S+: *CPU\s*\d+ is empty|)\s*$"
)

_GZIP = b"\x1f\x8b"
_XZ = b"\xfd7zXZ\x00"


def open_input(path: str) -> Tuple[IO[bytes], Optional[str]]:
    """A binary stream of the decompressed trace, and the compression found (or ``None``).

    ``-`` is standard input. Compression is recognised by magic bytes, so it works on stdin.
    """
    try:
        raw: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as e:
        raise BadTrace("cannot open %s: %s" % (path, e.strerror)) from e
    buf = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[arg-type,type-var]
    try:
        head = buf.peek(6)[:6]
    except OSError as e:
        raise BadTrace("cannot read %s: %s" % (path, e)) from e
    if head.startswith(_GZIP):
        return gzip.GzipFile(fileobj=buf, mode="rb"), "gzip"  # type: ignore[return-value]
    if head.startswith(_XZ):
        return lzma.LZMAFile(buf, "rb"), "xz"  # type: ignore[return-value]
    return buf, None


def detect_format(lines: Iterable[bytes]) -> Optional[str]:
    """The format whose grammar matches most of ``lines``; headers decide ties. ``None`` if none."""
    lines = list(lines)
    hits = {f: 0 for f in FORMATS}
    header: Optional[str] = None
    buffers = 0
    for line in lines:
        s = line.lstrip()
        if s.startswith(b"# tracer:") or s.startswith(b"# entries-in-buffer"):
            header = header or "ftrace"
        elif s.startswith(b"cpus=") or s.startswith(b"version ="):
            header = header or "trace-cmd"
        for f in FORMATS:
            m = GRAMMARS[f].match(line)
            if m:
                hits[f] += 1
                if f == "trace-cmd" and m.group("buffer"):
                    buffers += 1
    best = max(FORMATS, key=lambda f: (hits[f], f == header, f == "ftrace"))
    if hits[best] == 0:
        return header
    if header is None and best == "ftrace" and buffers * 2 > hits["trace-cmd"]:
        header = "trace-cmd"  # "BUFFER: comm-pid [cpu]": trace-cmd report of an instance
    if best in ("ftrace", "trace-cmd") and header in ("ftrace", "trace-cmd"):
        # The two grammars differ only by the optional buffer prefix.
        return header if hits[header] >= hits[best] else best
    return best


def classify_other(line: bytes) -> Tuple[str, Optional[Tuple[int, Optional[int]]]]:
    """For a line no event grammar took: ``("lost", (cpu, n))``, ``("ignored", None)`` or
    ``("malformed", None)``."""
    m = LOST.match(line)
    if m is not None:
        cpu = m.group("cpu") or m.group("cpu2")
        n = m.group("n") or m.group("n2")
        return "lost", (int(cpu), int(n) if n else None)
    if OTHER_IGNORED.match(line):
        return "ignored", None
    return "malformed", None


#: The longest line read: far above any real trace line (an event is at most a page of the ring
#: buffer), low enough that memory stays bounded whatever the input (``/dev/zero`` has no line end).
MAX_LINE = 1 << 20

#: What :class:`LineReader` yields in place of a line longer than its limit: no grammar takes it,
#: so it is counted as a malformed line at its own line number (the reader tells it by identity).
TOO_LONG = b"\0<line too long>"

_CHUNK = 1 << 18


class LineReader:
    """The ``\\n``-separated lines of a binary stream (without their ``\\n``), in bounded memory.

    The stream is read in chunks and split in C. A line longer than ``max_line`` bytes is skipped
    up to its end and yielded as :data:`TOO_LONG`, so one line costs at most ``max_line`` bytes of
    memory. A compressed stream cut short (``EOFError``) ends the lines, and :attr:`truncated`
    says so: what it held is still read.
    """

    def __init__(self, stream: IO[bytes], max_line: int = MAX_LINE, chunk: int = _CHUNK) -> None:
        self.stream = stream
        self.max_line = max_line
        self.chunk = chunk
        self.truncated: Optional[str] = None

    def __iter__(self) -> Iterator[bytes]:
        return itertools.chain.from_iterable(self.batches())

    def batches(self) -> Iterator[List[bytes]]:
        """The lines in lists, one per chunk read (a few thousand lines each)."""
        # One underlying read per call: a plain read() of a gzip/xz file loops over several and
        # loses what they returned when a later one finds the stream cut short.
        read = getattr(self.stream, "read1", self.stream.read)
        limit = self.max_line
        # A chunk no longer than the limit cannot hold a whole over-long line: only the first and
        # the last piece of each chunk (those joined with the neighbouring chunks) need a check.
        size = min(self.chunk, limit)
        carry: List[bytes] = []  # the start of a line not ended yet
        carried = 0
        skipping = False  # inside a line already known to be over-long
        while True:
            try:
                block = read(size)
            except EOFError as e:  # gzip/xz stream cut short: keep what it held
                self.truncated = str(e) or "compressed stream ended early"
                break
            if not block:
                break
            lines = block.split(b"\n")
            last = lines.pop()
            if lines:
                first = lines[0]
                if skipping:
                    lines[0] = TOO_LONG
                    skipping = False
                elif carry:
                    if carried + len(first) > limit:
                        lines[0] = TOO_LONG
                    else:
                        carry.append(first)
                        lines[0] = b"".join(carry)
                carry = []
                carried = 0
                yield lines
            if not skipping and last:
                carried += len(last)
                if carried > limit:
                    skipping = True
                    carry = []
                    carried = 0
                else:
                    carry.append(last)
        if skipping:
            yield [TOO_LONG]
        elif carry:
            yield [b"".join(carry)]


def head_lines(lines: Iterator[bytes], max_lines: int = 2000, max_bytes: int = 1 << 20) -> List[bytes]:
    """Take up to ``max_lines`` lines (and about ``max_bytes``) for detection; they are replayed."""
    out: List[bytes] = []
    size = 0
    for line in lines:
        out.append(line)
        size += len(line)
        if len(out) >= max_lines or size >= max_bytes:
            break
    return out


def split_head(batches: Iterator[List[bytes]]) -> Tuple[List[bytes], List[bytes]]:
    """:func:`head_lines` of batched lines: ``(head, first)``, where ``first`` is every line taken
    from ``batches`` to find the head (the head is its start); the rest stays in ``batches``."""
    first: List[bytes] = []
    size = 0
    for batch in batches:
        first.extend(batch)
        size += sum(map(len, batch))
        if len(first) >= 2000 or size >= 1 << 20:
            break
    return head_lines(iter(first)), first


def grammar(fmt: str) -> Pattern[bytes]:
    return GRAMMARS[fmt]
