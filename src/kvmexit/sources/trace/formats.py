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
import lzma
import re
import sys
from typing import IO, Iterable, List, Optional, Pattern, Tuple

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
]

FORMATS = ("ftrace", "trace-cmd", "perf")

_FTRACE = (
    rb"^\s*(?P<comm>.*?)-(?P<tid>\d+)\s+(?:\(\s*(?P<tgid>\d+|-+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
    rb"(?:[^\s\[\]]{4,6}\s+)?(?P<sec>\d+)\.?(?P<frac>\d*):\s+(?P<event>\w+):\s*(?P<payload>.*)"
)
_TRACECMD = rb"^(?:(?P<buffer>\S+): )?" + _FTRACE[1:]
_PERF = (
    rb"^\s*(?P<comm>.*?)\s+(?:(?P<tgid>\d+)/)?(?P<tid>\d+)\s+\[(?P<cpu>\d+)\]\s+"
    rb"(?P<sec>\d+)\.?(?P<frac>\d*):\s+(?:\d+\s+)?(?P<sys>\w+):(?P<event>\w+):\s*(?P<payload>.*)"
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
    rb"^(?:\S+: )?\s*(?:CPU:\s*(?P<cpu>\d+)\s+\[(?:LOST\s+(?P<n>\d+)\s+EVENTS|(?P<n2>\d+\s+)?EVENTS DROPPED)\]"
    rb"|#+ CPU (?P<cpu2>\d+) buffer started #+)\s*$"
)

#: Known lines that are not events: headers of the three tools.
OTHER_IGNORED = re.compile(
    rb"^\s*(?:#.*|cpus=\d+|version\s*=\s*\d+.*|CPU\s*\d+ is empty|\S+: *CPU\s*\d+ is empty|)\s*$"
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


def head_lines(stream: IO[bytes], max_lines: int = 2000, max_bytes: int = 1 << 20) -> List[bytes]:
    """Read up to ``max_lines`` lines (and about ``max_bytes``) for detection; they are replayed."""
    out: List[bytes] = []
    size = 0
    for line in stream:
        out.append(line)
        size += len(line)
        if len(out) >= max_lines or size >= max_bytes:
            break
    return out


def grammar(fmt: str) -> Pattern[bytes]:
    return GRAMMARS[fmt]
