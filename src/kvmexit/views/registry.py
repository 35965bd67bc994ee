"""The report views, registered by name behind one interface (:class:`View`).

A view writes reports to one stream: :meth:`View.emit` once per report (with its interval in
interval mode), :meth:`View.close` once at the end. :class:`kvmexit.commands.common.Emitter`
looks views up here by name and has no branch per format, so a new format is a new class::

    @register("markdown")
    class MarkdownView(View):
        def emit(self, report, interval=None): self.out.write(...)

(Interactive and pulled views, ``top`` and the Prometheus collector, read snapshots themselves.)
"""

from __future__ import annotations

import abc
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, TextIO, Type, TypeVar

from ..model import Report
from .csv import format_csv
from .json import report_document
from .text import format_hist, format_table

__all__ = ["VIEWS", "View", "ViewOptions", "make_view", "register"]


@dataclass
class ViewOptions:
    """What the views may need, in plain values (never an argparse namespace)."""

    #: The JSON ``source`` object: what was traced or read.
    source: Dict[str, Any]
    hist: bool = False  #: text: a latency histogram under the table
    #: CSV's time column when there is no interval (a trace's own time); None: now.
    stamp: Optional[str] = None
    path: Optional[str] = None  #: views written to a file of their own (html)
    force: bool = False  #: ... which may then replace an existing file
    command: Optional[str] = None  #: the command line, for provenance
    sort: str = "count"


class View(abc.ABC):
    #: A machine-readable stream: the closing self-check line goes to stderr, not into it.
    machine = False

    def __init__(self, out: TextIO, options: ViewOptions) -> None:
        self.out = out
        self.options = options

    @abc.abstractmethod
    def emit(self, report: Report, interval: Optional[Dict[str, Any]] = None) -> None:
        """Write one report (``interval``: its ``start``, ``end`` and ``seconds``, or None)."""

    def close(self, timeline: Optional[Any] = None, notes: Sequence[str] = ()) -> None:
        """Write what is written once, at the end (by default nothing)."""
        return None


V = TypeVar("V", bound=Type[View])

#: name -> view class.
VIEWS: Dict[str, Type[View]] = {}


def register(name: str) -> Callable[[V], V]:
    def add(cls: V) -> V:
        VIEWS[name] = cls
        return cls

    return add


def make_view(name: str, out: TextIO, options: ViewOptions) -> View:
    return VIEWS[name](out, options)


def _is_tty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False


@register("text")
class TextView(View):
    def emit(self, report: Report, interval: Optional[Dict[str, Any]] = None) -> None:
        if interval:
            self.out.write("%s (%.1fs)\n" % (interval["end"], interval["seconds"]))
        self.out.write(format_table(report) + "\n")
        if self.options.hist:
            for row in report.rows:
                self.out.write("\n" + format_hist(row) + "\n")
        self.out.write("\n")


@register("json")
class JsonView(View):
    machine = True

    def emit(self, report: Report, interval: Optional[Dict[str, Any]] = None) -> None:
        doc = report_document(report, self.options.source, interval, with_hist=True)
        self.out.write(json.dumps(doc, sort_keys=False) + "\n")


@register("csv")
class CsvView(View):
    """One header per stream (a log file appended to knows it has one already)."""

    machine = True

    def __init__(self, out: TextIO, options: ViewOptions) -> None:
        super().__init__(out, options)
        self._header = True

    def emit(self, report: Report, interval: Optional[Dict[str, Any]] = None) -> None:
        if interval:
            stamp = interval["end"]
        else:
            stamp = self.options.stamp if self.options.stamp is not None else time.strftime("%Y-%m-%dT%H:%M:%S")
        at_start = getattr(self.out, "at_start", None)
        header = self._header if at_start is None else at_start
        self.out.write(format_csv(report, time=stamp, header=header, escape=_is_tty(self.out)))
        self._header = False


@register("html")
class HtmlView(View):
    """One self-contained page at ``options.path``, written at :meth:`close` (``out`` is unused)."""

    machine = True

    def __init__(self, out: TextIO, options: ViewOptions) -> None:
        super().__init__(out, options)
        from .html import HtmlReport

        if options.path is None:
            raise ValueError("the html view needs options.path")
        self.page = HtmlReport(options.path, options.force, command=options.command)

    def emit(self, report: Report, interval: Optional[Dict[str, Any]] = None) -> None:
        self.page.add(report, report_document(report, self.options.source, interval, with_hist=True), interval)

    def close(self, timeline: Optional[Any] = None, notes: Sequence[str] = ()) -> None:
        self.page.write(self.options.source, timeline, notes, sort=self.options.sort)
