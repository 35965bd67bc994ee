"""The screen of ``kvmexit top``, without curses: state, keys and the lines to draw.

A thin view over the model: each refresh hands in a cumulative snapshot; rows are
:func:`kvmexit.model.build_report` over it (TOTAL) and over its delta from the previous one
(rates and shares), so the numbers are those of every other view.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..model import SORT_KEYS, ExitStats, Report, Row, Snapshot, build_report, delta, percentile
from .text import accounting, format_duration

__all__ = ["GROUP_KEYS", "HELP", "Level", "TopView", "restrict"]

#: Keys that switch the grouping directly.
GROUP_KEYS = {"1": "vm", "2": "vcpu", "3": "thread", "4": "reason"}
SORTS = ("count", "total", "avg", "p99", "max", "reason", "tid")

HELP = (
    "q quit  1-4 vm/vcpu/thread/reason  s sort  enter drill  bksp back  f VM filter  r reason filter  "
    "x clear  space pause  c total/interval  ? help"
)
HELP_LONG = (
    "Keys:",
    "  q            quit (also Ctrl-C)",
    "  1 2 3 4      group by VM, vCPU, thread, reason",
    "  s / S        next / previous sort order",
    "  up/down      select a row",
    "  enter        drill into the selected VM (its vCPUs), then vCPU (its reasons)",
    "  backspace    back out of a drill",
    "  f            filter by VM name (empty: none)",
    "  r            filter by exit reason (empty: none)",
    "  x            clear the filters",
    "  space / p    pause (the screen stays; tracing goes on)",
    "  c            rates and shares of the last interval, or totals since start",
    "  ?            this help (any key returns)",
    "",
    "Columns: EXITS/S exits per second in the last interval; %EXITS and %TIME each row's share of",
    "the exits and of the exit time shown; AVG, P99 over exits whose entry was seen; HALT% the share",
    "of exit time the vCPU was halted; TOTAL exits since kvmexit started.",
)


@dataclasses.dataclass(frozen=True)
class Level:
    """One step of a drill: what is shown and which VM process or thread it is restricted to."""

    group_by: str
    tgid: Optional[int] = None
    tid: Optional[int] = None
    title: str = ""


def restrict(snapshot: Snapshot, tgid: Optional[int], tid: Optional[int]) -> Snapshot:
    """The part of a snapshot belonging to one VM process (and thread)."""
    if tgid is None and tid is None:
        return snapshot
    stats = {
        k: v for k, v in snapshot.stats.items() if (tgid is None or k.tgid == tgid) and (tid is None or k.tid == tid)
    }
    return dataclasses.replace(snapshot, stats=stats)


_IDENT = {
    "vm": (("VM", "vm", "<"), ("TGID", "tgid", ">")),
    "vcpu": (("VM", "vm", "<"), ("VCPU", "vcpu", ">"), ("TID", "tid", ">")),
    "thread": (("VM", "vm", "<"), ("VCPU", "vcpu", ">"), ("TID", "tid", ">"), ("REASON", "reason", "<")),
    "reason": (("REASON", "reason", "<"),),
}
_STATS = ("EXITS/S", "%EXITS", "%TIME", "AVG", "P99", "HALT%", "TOTAL")


def _identity(row: Row) -> tuple:
    return (row.tgid, row.tid, row.vm, row.vcpu, row.reason, row.code, row.detail)


def _dash(v: object) -> str:
    return "-" if v is None or v == "" else str(v)


class TopView:
    """State of the screen; :meth:`update` takes a snapshot, :meth:`key` a key, :meth:`lines`
    gives what to draw."""

    def __init__(
        self,
        label: Callable[[str, int, int], str],
        group_by: str = "vm",
        sort: str = "count",
        vms: Sequence[str] = (),
        reasons: Sequence[str] = (),
        title: str = "kvmexit top",
        interval: float = 2.0,
    ) -> None:
        self.label = label
        self.stack: List[Level] = [Level(group_by)]
        self.sort = sort
        self.vms = list(vms)
        self.reasons = list(reasons)
        self.title = title
        self.interval = interval
        self.paused = False
        self.cumulative = False
        self.selected = 0
        self.help = False
        self.prompt: Optional[Tuple[str, str]] = None  # (what, text typed so far)
        self._snap: Optional[Snapshot] = None
        self._prev: Optional[Snapshot] = None
        self._rows: List[Tuple[Row, Optional[Row]]] = []
        self._report: Optional[Report] = None
        self._seconds = 0.0
        self._stamp = ""

    # -- input ------------------------------------------------------------------------------
    def update(self, snapshot: Snapshot) -> None:
        """A new cumulative snapshot (ignored while paused)."""
        if self.paused:
            return
        self._prev, self._snap = self._snap, snapshot
        self._stamp = time.strftime("%H:%M:%S")
        self._rebuild()

    def key(self, k: str) -> bool:
        """Handle one key (curses names for special keys); False to quit."""
        if self.prompt is not None:
            self._prompt_key(k)
            return True
        if self.help:
            self.help = False
            return True
        if k in ("q", "Q"):
            return False
        if k in GROUP_KEYS:
            level = self.stack[-1]
            self.stack[-1] = dataclasses.replace(level, group_by=GROUP_KEYS[k])
            self.selected = 0
        elif k in ("s", "S"):
            i = SORTS.index(self.sort) if self.sort in SORTS else 0
            self.sort = SORTS[(i + (1 if k == "s" else -1)) % len(SORTS)]
        elif k == "KEY_UP":
            self.selected = max(0, self.selected - 1)
        elif k == "KEY_DOWN":
            self.selected = min(max(0, len(self._rows) - 1), self.selected + 1)
        elif k in ("\n", "\r", "KEY_ENTER", "KEY_RIGHT"):
            self._drill()
        elif k in ("KEY_BACKSPACE", "\x7f", "\b", "KEY_LEFT", "\x1b"):
            if len(self.stack) > 1:
                self.stack.pop()
                self.selected = 0
        elif k == "f":
            self.prompt = ("VM", "")
        elif k == "r":
            self.prompt = ("reason", "")
        elif k == "x":
            self.vms, self.reasons = [], []
        elif k in (" ", "p"):
            self.paused = not self.paused
        elif k == "c":
            self.cumulative = not self.cumulative
        elif k in ("?", "h"):
            self.help = True
        else:
            return True
        self._rebuild()
        return True

    def _prompt_key(self, k: str) -> None:
        assert self.prompt is not None
        what, text = self.prompt
        if k in ("\n", "\r", "KEY_ENTER"):
            self.prompt = None
            values = [v for v in text.split(",") if v]
            if what == "VM":
                self.vms = values
            else:
                self.reasons = values
            self.selected = 0
            self._rebuild()
        elif k == "\x1b":
            self.prompt = None
        elif k in ("KEY_BACKSPACE", "\x7f", "\b"):
            self.prompt = (what, text[:-1])
        elif len(k) == 1 and k.isprintable():
            self.prompt = (what, text + k)

    def _drill(self) -> None:
        if not self._rows:
            return
        row = self._rows[min(self.selected, len(self._rows) - 1)][0]
        level = self.stack[-1]
        if level.group_by == "vm":
            nxt = Level("vcpu", row.tgid, None, _dash(row.vm))
        elif level.group_by == "vcpu":
            nxt = Level("reason", row.tgid, row.tid, "vCPU %s (tid %s)" % (_dash(row.vcpu), row.tid))
        else:
            return
        self.stack.append(nxt)
        self.selected = 0

    # -- model --------------------------------------------------------------------------------
    def _rebuild(self) -> None:
        if self._snap is None:
            return
        level = self.stack[-1]
        cur = restrict(self._snap, level.tgid, level.tid)
        report = build_report(cur, self.label, level.group_by, "count", None, self.reasons, self.vms)
        recent: Dict[tuple, Row] = {}
        self._seconds = 0.0
        if self._prev is not None:
            d = delta(cur, restrict(self._prev, level.tgid, level.tid))
            self._seconds = d.time_ns / 1e9
            for r in build_report(d, self.label, level.group_by, "count", None, self.reasons, self.vms).rows:
                recent[_identity(r)] = r
        rows = [(r, recent.get(_identity(r))) for r in report.rows]
        key = SORT_KEYS[self.sort]
        if self.cumulative or self._prev is None:
            rows.sort(key=lambda p: key(p[0]))
        else:
            # By the interval's numbers; rows idle in the interval after the others.
            rows.sort(key=lambda p: (p[1] is None, key(p[1] or p[0])))
        self._rows = rows
        self._report = report
        self.selected = min(self.selected, max(0, len(rows) - 1))

    # -- output -------------------------------------------------------------------------------
    def lines(self, width: int, height: int) -> List[Tuple[str, str]]:
        """(text, style) per screen line; style is "", "header", "selected" or "status"."""
        out: List[Tuple[str, str]] = []
        if self.help:
            out = [(ln, "") for ln in HELP_LONG]
            return [(t[:width], s) for t, s in out[:height]]
        level = self.stack[-1]
        mode = "totals since start" if self.cumulative else "last %.2fs" % self._seconds
        head = "%s  %s  every %gs  by %s, sort %s, %s" % (
            self.title,
            self._stamp,
            self.interval,
            level.group_by,
            self.sort,
            mode,
        )
        if self.paused:
            head += "  [PAUSED]"
        out.append((head, "status"))
        out.append((self._health_line(), ""))
        crumbs = " > ".join(["all"] + [lv.title for lv in self.stack[1:]])
        filters = []
        if self.vms:
            filters.append("VM=" + ",".join(self.vms))
        if self.reasons:
            filters.append("reason=" + ",".join(self.reasons))
        out.append(("view: %s%s" % (crumbs, ("  filter: " + " ".join(filters)) if filters else ""), ""))
        table = self._table(level.group_by)
        body_room = max(0, height - len(out) - 1)
        out.append((table[0], "header"))
        first = max(0, self.selected - (body_room - 2)) if body_room > 1 else self.selected
        for i, text in enumerate(table[1:][first : first + max(0, body_room - 1)], start=first):
            out.append((text, "selected" if i == self.selected else ""))
        while len(out) < height - 1:
            out.append(("", ""))
        if self.prompt is not None:
            out.append(("%s filter (comma-separated, enter to apply): %s" % self.prompt, "status"))
        else:
            out.append((HELP, "status"))
        return [(t[:width], s) for t, s in out[:height]]

    def _health_line(self) -> str:
        if self._report is None:
            return "waiting for the first snapshot"
        return accounting(self._report)

    def _table(self, group_by: str) -> List[str]:
        ident = _IDENT[group_by]
        headers = [h for h, _, _ in ident] + list(_STATS)
        aligns = [a for _, _, a in ident] + [">"] * len(_STATS)
        halt_known = self._report.halt_known if self._report else True
        shown = [(r if self.cumulative else d) for r, d in self._rows]
        all_exits = sum(s.stats.exits for s in shown if s is not None)
        all_ns = sum(s.stats.total_ns for s in shown if s is not None)
        body = []
        for total, recent in self._rows:
            st: ExitStats = (total if self.cumulative else recent or _EMPTY_ROW).stats
            rate = "-" if self.cumulative or not self._seconds else "%.1f" % (st.exits / self._seconds)
            cells = [_dash(getattr(total, f)) for _, f, _ in ident]
            cells += [
                rate,
                "%.1f" % (100.0 * st.exits / all_exits) if all_exits else "-",
                "%.1f" % (100.0 * st.total_ns / all_ns) if all_ns else "-",
                format_duration(st.total_ns / st.pairs) if st.pairs else "-",
                format_duration(_p99(st)),
                "%d%%" % round(100 * st.halt_ns / st.total_ns) if st.total_ns and halt_known else "-",
                str(total.stats.exits),
            ]
            body.append(cells)
        widths = [max([len(h)] + [len(c[i]) for c in body]) for i, h in enumerate(headers)]
        template = "  ".join("{:%s%d}" % (a, w) for a, w in zip(aligns, widths))
        return [template.format(*headers)] + [template.format(*c) for c in body]


def _p99(st: ExitStats) -> Optional[int]:
    return percentile(st, 99)


_EMPTY_ROW = Row(None, None, None, None, None, None, None, None, ExitStats())
