"""Offline source: text traces of kvm:kvm_exit/kvm:kvm_entry (ftrace, trace-cmd, perf).

``read_trace(path)`` streams a trace (plain, gzip or xz; ``-`` for stdin) through the same pairing
rules as the BPF program and returns a :class:`~kvmexit.model.Snapshot` for the shared views.
"""

from __future__ import annotations

from .decode import LAYOUTS, Decoder, detect_layout
from .formats import FORMATS, detect_format, open_input
from .pairing import EVENTS, Event, Pairer, Thread, TraceHealth, hist_slot
from .reader import NAMES_SUFFIX, TraceInfo, TraceResult, TraceSource, load_names, read_stream, read_trace

__all__ = [
    "EVENTS",
    "FORMATS",
    "LAYOUTS",
    "NAMES_SUFFIX",
    "Decoder",
    "Event",
    "Pairer",
    "Thread",
    "TraceHealth",
    "TraceInfo",
    "TraceResult",
    "TraceSource",
    "detect_format",
    "detect_layout",
    "hist_slot",
    "load_names",
    "open_input",
    "read_stream",
    "read_trace",
]
