"""The screen of ``kvmexit top``, without curses: state, keys and the lines to draw.

A thin view over the model: each refresh hands in a cumulative snapshot; rows are
:func:`kvmexit.model.build_report` over it (TOTAL) and over its delta from the previous one
(rates and shares), so the numbers are those of every other view: sub-reasons (a SUB column, a
"sub" grouping and a drill into a reason), the split of the exit time and EXIT% as in the report.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from ..model import (
    SORT_KEYS,
    SPLIT_FIELDS,
    SUB_GROUPINGS,
    ExitStats,
    Report,
    Row,
    Snapshot,
    build_report,
    delta,
    kernel_ns,
    percentile,
)
from .text import accounting, format_duration, printable

__all__ = ["DROP_ORDER", "GROUP_KEYS", "HELP", "Level", "TopView", "restrict"]

#: Keys that switch the grouping directly ("5", per reason and sub-reason, only with sub-reasons).
GROUP_KEYS = {"1": "vm", "2": "vcpu", "3": "thread", "4": "reason", "5": "sub"}
SORTS = ("count", "total", "avg", "p99", "max", "reason", "tid")

#: On a narrow terminal, after shortening headers and gaps, columns go in this order (never the
#: row's identity, %TIME or the split and EXIT% asked for); EXITS/S first in totals mode (it is
#: all "-" there).
DROP_ORDER = ("TGID", "TID", "TOTAL", "%EXITS", "P99", "EXITS/S", "AVG")

HELP = (
    "q quit  ? help  1-5 vm/vcpu/thread/reason/sub  s sort  enter drill  bksp back  u sub-reasons  t split  "
    "g guest  f VM filter  r reason filter  x clear  space pause  c total/interval"
)
HELP_LONG = (
    "Keys:",
    "  q            quit (also Ctrl-C)",
    "  1 2 3 4 5    group by VM, vCPU, thread, reason, reason and sub-reason (5: with --sub)",
    "  s / S        next / previous sort order",
    "  up/down      select a row",
    "  enter        drill into the selected VM (its vCPUs), then vCPU (its reasons), then, with",
    "               --sub, a reason (its sub-reasons)",
    "  backspace    back out of a drill",
    "  u            unfold / fold sub-reasons under each reason: a SUB column (with --sub)",
    "  t            show / hide the split of the exit time (with --split)",
    "  g            show / hide EXIT%, the share of time outside the guest (with --guest or --split)",
    "  f            filter by VM name (empty: none)",
    "  r            filter by exit reason (empty: none)",
    "  x            clear the filters",
    "  space / p    pause (the screen stays; tracing goes on)",
    "  c            rates and shares of the last interval, or totals since start",
    "  ?            this help (any key returns)",
    "",
    "Columns: EXITS/S exits per second in the last interval; %EXITS and %TIME each row's share of",
    "the exits and of the exit time shown; AVG, P99 over exits whose entry was seen; HALT% the share",
    "of exit time the vCPU was halted; with --split KERN% (the host kernel's on-CPU part), VMM%",
    "(user space), PREEMPT% (off CPU, runnable), BLOCKED% (off CPU, asleep outside a halt): with",
    "HALT% they add up to 100%; EXIT% exit time / (exit + guest time); TOTAL exits since start.",
    "A part this kernel cannot measure is '-', never 0.",
    "Narrow terminals: PREEMPT% and BLOCKED% become PRE% and BLK%, gaps one space, then columns",
    "go in this order: " + ", ".join(DROP_ORDER) + " (EXITS/S first in totals mode).",
)


@dataclasses.dataclass(frozen=True)
class Level:
    """One step of a drill: what is shown and which VM process or thread it is restricted to."""

    group_by: str
    tgid: Optional[int] = None
    tid: Optional[int] = None
    title: str = ""
    #: Drilled into one reason (its sub-reasons): the reason's name as shown.
    reason: Optional[str] = None


def restrict(snapshot: Snapshot, tgid: Optional[int], tid: Optional[int]) -> Snapshot:
    """The part of a snapshot belonging to one VM process (and thread), sub-reasons included."""
    if tgid is None and tid is None:
        return snapshot

    def mine(k: Any) -> bool:
        return (tgid is None or k.tgid == tgid) and (tid is None or k.tid == tid)

    stats = {k: v for k, v in snapshot.stats.items() if mine(k)}
    subs = {k: v for k, v in snapshot.subs.items() if mine(k)}
    return dataclasses.replace(snapshot, stats=stats, subs=subs)


_IDENT = {
    "vm": (("VM", "vm", "<"), ("TGID", "tgid", ">")),
    "vcpu": (("VM", "vm", "<"), ("VCPU", "vcpu", ">"), ("TID", "tid", ">")),
    "thread": (("VM", "vm", "<"), ("VCPU", "vcpu", ">"), ("TID", "tid", ">"), ("REASON", "reason", "<")),
    "reason": (("REASON", "reason", "<"),),
    "sub": (("REASON", "reason", "<"), ("SUB", "sub", "<")),
}
_SUB_COLUMN = ("SUB", "sub", "<")

#: The split's columns, after HALT% (as in the report): header, short header, field.
_SPLIT = (
    ("KERN%", "", "kernel_ns"),
    ("VMM%", "", "vmm_ns"),
    ("PREEMPT%", "PRE%", "preempt_ns"),
    ("BLOCKED%", "BLK%", "blocked_ns"),
)


class _Column(NamedTuple):
    header: str
    align: str
    cells: List[str]
    short: str = ""


def _identity(row: Row) -> tuple:
    return (row.tgid, row.tid, row.vm, row.vcpu, row.reason, row.code, row.detail, row.sub_value)


def _dash(v: object) -> str:
    return "-" if v is None or v == "" else printable(str(v))


def _share(part: Optional[int], total: int) -> str:
    return "%d%%" % round(100 * part / total) if total and part is not None else "-"


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
        sub_label: Optional[Callable[[str, int, int, int], str]] = None,
        show_sub: bool = False,
    ) -> None:
        """``sub_label`` (``reasons.subreasons.sub_label``): sub-reasons were traced and can be
        shown (``show_sub``: unfolded from the start). The split and EXIT% are shown whenever the
        snapshots measured them (``t`` and ``g`` hide them)."""
        self.label = label
        self.sub_label = sub_label
        self.show_sub = show_sub
        self.show_split = True
        self.show_guest = True
        #: A one-line answer to the last key (why it did nothing), shown until the next key.
        self.message = ""
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
        self.message = ""
        if k in ("q", "Q"):
            return False
        if k in GROUP_KEYS:
            if GROUP_KEYS[k] == "sub" and not self._subs_traced():
                self.message = _NO_SUBS
                return True
            level = self.stack[-1]
            self.stack[-1] = dataclasses.replace(level, group_by=GROUP_KEYS[k])
            self.selected = 0
        elif k == "u":
            if not self._subs_traced():
                self.message = _NO_SUBS
                return True
            self.show_sub = not self.show_sub
            if self.stack[-1].group_by not in SUB_GROUPINGS:
                self.message = "sub-reasons %s: they show when grouped by thread or reason (3, 4)" % (
                    "unfolded" if self.show_sub else "folded"
                )
        elif k == "t":
            if not self._split_known():
                self.message = "the split of the exit time is not traced: start top with --split"
                return True
            self.show_split = not self.show_split
        elif k == "g":
            if not self._guest_known():
                self.message = "time in the guest is not traced: start top with --guest (or --split)"
                return True
            self.show_guest = not self.show_guest
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
        elif level.group_by == "reason" and self._subs_traced() and row.reason is not None:
            nxt = Level("sub", level.tgid, level.tid, _dash(row.reason), reason=row.reason)
        else:
            return
        self.stack.append(nxt)
        self.selected = 0

    # -- what the snapshots hold ------------------------------------------------------------------
    def _subs_traced(self) -> bool:
        return self.sub_label is not None and (self._snap is None or self._snap.subs_known)

    def _split_known(self) -> bool:
        return self._snap is not None and any(f not in self._snap.unknown for f in SPLIT_FIELDS)

    def _guest_known(self) -> bool:
        return self._snap is not None and "guest_ns" not in self._snap.unknown

    def _by_sub(self, level: Level) -> bool:
        """Rows split by sub-reason: the "sub" grouping, or unfolded in one that keeps the reason."""
        if not self._subs_traced():
            return False
        return level.group_by == "sub" or (self.show_sub and level.group_by in SUB_GROUPINGS)

    # -- model --------------------------------------------------------------------------------
    def _rebuild(self) -> None:
        if self._snap is None:
            return
        level = self.stack[-1]
        cur = restrict(self._snap, level.tgid, level.tid)
        by_sub = self._by_sub(level)
        reasons = [level.reason] if level.reason is not None else self.reasons

        def report_of(snap: Snapshot) -> Report:
            return build_report(
                snap,
                self.label,
                level.group_by,
                "count",
                None,
                reasons,
                self.vms,
                by_sub=by_sub,
                sub_label=self.sub_label if by_sub else None,
            )

        def wanted(r: Row) -> bool:  # a drilled reason exactly (the filter also takes WFx+SERROR)
            return level.reason is None or r.reason == level.reason

        report = report_of(cur)
        recent: Dict[tuple, Row] = {}
        self._seconds = 0.0
        if self._prev is not None:
            d = delta(cur, restrict(self._prev, level.tgid, level.tid))
            self._seconds = d.time_ns / 1e9
            for r in report_of(d).rows:
                recent[_identity(r)] = r
        rows = [(r, recent.get(_identity(r))) for r in report.rows if wanted(r)]
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
        """(text, style) per screen line; style is "", "header", "selected" or "status". The table
        fits ``width - 1`` (curses cannot write the last cell): see :data:`DROP_ORDER`."""
        out: List[Tuple[str, str]] = []
        if self.help:
            out = [(ln, "") for ln in HELP_LONG]
            return [(t[:width], s) for t, s in out[:height]]
        level = self.stack[-1]
        mode = "totals since start" if self.cumulative else "last %.2fs" % self._seconds
        grouping = level.group_by + (" + sub" if self._by_sub(level) and level.group_by != "sub" else "")
        head = "%s  %s  every %gs  by %s, sort %s, %s" % (
            self.title,
            self._stamp,
            self.interval,
            grouping,
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
        table = self._table(level.group_by, max(1, width - 1))
        body_room = max(0, height - len(out) - 1)
        out.append((table[0], "header"))
        first = max(0, self.selected - (body_room - 2)) if body_room > 1 else self.selected
        for i, text in enumerate(table[1:][first : first + max(0, body_room - 1)], start=first):
            out.append((text, "selected" if i == self.selected else ""))
        while len(out) < height - 1:
            out.append(("", ""))
        if self.prompt is not None:
            out.append(("%s filter (comma-separated, enter to apply): %s" % self.prompt, "status"))
        elif self.message:
            out.append((self.message, "status"))
        else:
            out.append((HELP, "status"))
        return [(t[:width], s) for t, s in out[:height]]

    def _health_line(self) -> str:
        if self._report is None:
            return "waiting for the first snapshot"
        return accounting(self._report)

    def _columns(self, group_by: str) -> List[_Column]:
        """Every column of the table, before fitting it to the screen."""
        report = self._report
        ident = list(_IDENT[group_by])
        if report is not None and report.by_sub and group_by != "sub":
            ident.append(_SUB_COLUMN)
        halt_known = report.halt_known if report else True
        unknown = report.unknown if report else frozenset(SPLIT_FIELDS)
        split = self.show_split and any(f not in unknown for f in SPLIT_FIELDS)
        kernel_known = halt_known and not any(f in unknown for f in SPLIT_FIELDS)
        guest = self.show_guest and "guest_ns" not in unknown
        shown = [(r if self.cumulative else d) for r, d in self._rows]
        all_exits = sum(s.stats.exits for s in shown if s is not None)
        all_ns = sum(s.stats.total_ns for s in shown if s is not None)
        cols = [_Column(h, a, []) for h, _, a in ident]
        names = ["EXITS/S", "%EXITS", "%TIME", "AVG", "P99", "HALT%"]
        if split:
            names += [h for h, _, _ in _SPLIT]
        if guest:
            names.append("EXIT%")
        names.append("TOTAL")
        short = {h: sh for h, sh, _ in _SPLIT}
        cols += [_Column(h, ">", [], short.get(h, "")) for h in names]
        for total, recent in self._rows:
            st: ExitStats = (total if self.cumulative else recent or _EMPTY_ROW).stats
            t = st.total_ns
            cells = [_dash(getattr(total, f)) for _, f, _ in ident]
            cells += [
                "-" if self.cumulative or not self._seconds else "%.1f" % (st.exits / self._seconds),
                "%.1f" % (100.0 * st.exits / all_exits) if all_exits else "-",
                "%.1f" % (100.0 * t / all_ns) if all_ns else "-",
                format_duration(t / st.pairs) if st.pairs else "-",
                format_duration(_p99(st)),
                _share(st.halt_ns, t) if halt_known else "-",
            ]
            if split:
                for _, _, f in _SPLIT:
                    if f == "kernel_ns":
                        cells.append(_share(kernel_ns(st), t) if kernel_known else "-")
                    else:
                        cells.append(_share(getattr(st, f), t) if f not in unknown else "-")
            if guest:
                whole = t + st.guest_ns
                cells.append("%.1f%%" % (100.0 * t / whole) if whole else "-")
            cells.append(str(total.stats.exits))
            for col, cell in zip(cols, cells):
                col.cells.append(cell)
        return cols

    def _table(self, group_by: str, width: int = 1 << 30) -> List[str]:
        """Header and rows, fitted to ``width``: long headers shortened, then gaps of one space,
        then columns dropped in :data:`DROP_ORDER`; whatever is still too wide is cut by lines()."""
        cols = self._columns(group_by)
        order = (("EXITS/S",) if self.cumulative else ()) + DROP_ORDER

        def layout(cols: List[_Column], short: bool, gap: int) -> Tuple[List[str], List[int], int]:
            heads = [(c.short or c.header) if short else c.header for c in cols]
            widths = [max([len(h)] + [len(x) for x in c.cells]) for h, c in zip(heads, cols)]
            return heads, widths, sum(widths) + gap * (len(cols) - 1)

        for short, gap in ((False, 2), (True, 2), (True, 1)):
            heads, widths, used = layout(cols, short, gap)
            if used <= width:
                break
        for name in order:
            if used <= width:
                break
            cols = [c for c in cols if c.header != name]
            heads, widths, used = layout(cols, short, gap)
        template = (" " * gap).join("{:%s%d}" % (c.align, w) for c, w in zip(cols, widths))
        body = [[c.cells[i] for c in cols] for i in range(len(self._rows))]
        return [template.format(*heads).rstrip()] + [template.format(*cells).rstrip() for cells in body]


def _p99(st: ExitStats) -> Optional[int]:
    return percentile(st, 99)


_EMPTY_ROW = Row(None, None, None, None, None, None, None, None, ExitStats())
_NO_SUBS = "sub-reasons are not traced: start top with --sub"
