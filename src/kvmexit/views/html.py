"""One self-contained HTML page of a report: plots (matplotlib, inline SVG), tables, provenance.

The page needs nothing but itself: no script, no stylesheet or font from anywhere else, no server.
Its numbers come from the same :class:`~kvmexit.model.Report` objects as the text and JSON views,
and it embeds the JSON documents ``--json`` prints (``<script type="application/json"
id="kvmexit-report">``: one document, or a list with one per interval).

matplotlib is optional: :func:`require_matplotlib` raises a one-line error naming it.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import KvmexitError
from ..model import HIST_SLOTS, HIST_SUB, PERCENTILE_BOUND, Report, Row, bucket_bounds, percentile
from ..timeline import Timeline
from .text import format_duration, format_health, format_table

__all__ = ["HtmlReport", "TITLES", "render_page", "require_matplotlib", "write_new"]

#: Section titles (tests look for them in the rendered page).
TITLES = {
    "stack": "Exit time per vCPU thread, by reason",
    "hist": "Exit latency per reason (the kernel's buckets, log axis)",
    "rate": "Exits per second over time, per reason",
    "heat": "Exit latency over time",
    "check": "Self-check: where every exit went",
    "table": "Report table",
    "source": "Provenance",
}

#: At most this many bars and reasons in a plot (the rest: "other", and the tables have all).
_MAX_BARS = 24
_MAX_REASONS = 12


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise KvmexitError(
            "--html needs matplotlib", hint="apt install python3-matplotlib, or pip install matplotlib"
        ) from None


def write_new(path: str, text: str, force: bool) -> None:
    """Write ``path`` without following a symlink there; an existing file only with ``force``."""
    data = text.encode("utf-8")
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError:
            raise KvmexitError("%s already exists" % path, hint="use --force to overwrite it") from None
        except OSError as e:
            raise KvmexitError("cannot create %s: %s" % (path, e.strerror)) from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # replaces a symlink itself, never its target
    except OSError as e:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise KvmexitError("cannot write %s: %s" % (path, e.strerror)) from None


def check_writable(path: str, force: bool) -> None:
    """Fail before tracing, not after, when the page could not be written."""
    if os.path.lexists(path) and not force:
        raise KvmexitError("%s already exists" % path, hint="use --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise KvmexitError("cannot create %s: no directory %s" % (path, parent))


# -- plots ---------------------------------------------------------------------------------------


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML declaration and DOCTYPE: inline SVG in HTML


def _colors(names: Sequence[str]) -> Dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return {n: cmap(i % 20) for i, n in enumerate(names)}


def _who(r: Row) -> str:
    parts = []
    if r.vm:
        parts.append(r.vm)
    if r.vcpu is not None:
        parts.append("vCPU %d" % r.vcpu)
    elif r.comm:
        parts.append(r.comm)
    if r.tid is not None:
        parts.append("tid %d" % r.tid)
    elif r.tgid is not None and not r.vm:
        parts.append("pid %d" % r.tgid)
    return " ".join(parts) or "all"


def _reason_order(rows: Sequence[Row]) -> List[str]:
    total: Dict[str, int] = {}
    for r in rows:
        name = r.reason or "all"
        total[name] = total.get(name, 0) + r.stats.total_ns
    return sorted(total, key=lambda n: (-total[n], n))


def _plot_stack(rows: Sequence[Row], colors: Dict[str, Any], reasons: List[str]) -> str:
    from matplotlib.figure import Figure

    per_who: Dict[str, Dict[str, float]] = {}
    for r in rows:
        reason = r.reason or "all"
        if reason not in reasons:
            reason = "other"
        d = per_who.setdefault(_who(r), {})
        d[reason] = d.get(reason, 0.0) + r.stats.total_ns / 1e6
    order = sorted(per_who, key=lambda w: -sum(per_who[w].values()))[:_MAX_BARS]
    order.reverse()  # biggest at the top of a horizontal bar chart
    fig = Figure(figsize=(9, 0.9 + 0.32 * max(len(order), 1)))
    ax = fig.subplots()
    left = [0.0] * len(order)
    for reason in [*reasons, "other"]:
        widths = [per_who[w].get(reason, 0.0) for w in order]
        if not any(widths):
            continue
        ax.barh(order, widths, left=left, label=reason, color=colors.get(reason, "#999999"))
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel("exit time (ms): kvm_exit to kvm_entry, summed")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="reason")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def _panels(n: int, row_height: float) -> Tuple[Any, List[Any]]:
    """A figure with ``n`` small plots, three to a row (the unused cells hidden), and its axes."""
    from matplotlib.figure import Figure

    cols = 3
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=(10, row_height * nrows))
    axes = list(fig.subplots(nrows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _plot_hists(rows_by_reason: Sequence[Row], colors: Dict[str, Any]) -> str:
    from matplotlib.ticker import NullFormatter

    rows = [r for r in rows_by_reason if r.stats.pairs][:_MAX_REASONS]
    if not rows:
        return "<p>No timed exits (no exit was followed by its entry).</p>"
    fig, axes = _panels(len(rows), 2.4)
    for ax, r in zip(axes, rows):
        used = [i for i, n in enumerate(r.stats.hist) if n]
        lows = [max(bucket_bounds(i)[0], 1) for i in used]
        widths = [bucket_bounds(i)[1] + 1 - lo for i, lo in zip(used, lows)]
        ax.bar(lows, [r.stats.hist[i] for i in used], width=widths, align="edge", color=colors.get(r.reason or "all"))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide within one decade
        for q, style in ((50, "-"), (90, "--"), (99, ":")):
            v = percentile(r.stats, q)
            if v is not None:
                ax.axvline(
                    max(v, 1), color="black", linestyle=style, linewidth=1, label="p%d %s" % (q, format_duration(v))
                )
        ax.set_title("%s: %d timed exits" % (r.reason or "all", r.stats.pairs), fontsize=9)
        ax.set_xlabel("exit->entry time (ns)", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _svg(fig)


def _edges(tl: Timeline) -> List[float]:
    return [*tl.starts, tl.starts[-1] + tl.widths[-1]]


def _plot_rate(tl: Timeline, reasons: List[str]) -> str:
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    names = [n for n in reasons if n in tl.exits][:_MAX_REASONS]
    names += [n for n in sorted(tl.exits) if n not in names][: max(0, _MAX_REASONS - len(names))]
    rates = np.array([[c / w if w > 0 else 0.0 for c, w in zip(tl.exits[n], tl.widths)] for n in names])
    fig = Figure(figsize=(10, 0.9 + 0.3 * len(names)))
    ax = fig.subplots()
    mesh = ax.pcolormesh(
        _edges(tl), np.arange(len(names) + 1), np.ma.masked_equal(rates, 0), norm=LogNorm(), cmap="viridis"
    )
    ax.set_yticks(np.arange(len(names)) + 0.5, names)
    ax.set_xlabel("seconds from the start")
    fig.colorbar(mesh, ax=ax, label="%s per second" % tl.counts)
    return _svg(fig)


def _plot_heat(tl: Timeline) -> str:
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    used = [i for i in range(HIST_SLOTS) if any(tl.latency[i])]
    if not used:
        return "<p>No timed exits.</p>"
    lo, hi = used[0], used[-1]
    counts = np.array([tl.latency[i] for i in range(lo, hi + 1)], dtype=float)
    fig = Figure(figsize=(10, 3.6))
    ax = fig.subplots()
    bounds = [max(bucket_bounds(i)[0], 1) for i in range(lo, hi + 1)] + [bucket_bounds(hi)[1] + 1]
    mesh = ax.pcolormesh(_edges(tl), bounds, np.ma.masked_equal(counts, 0), norm=LogNorm(), cmap="magma")
    ax.set_yscale("log")
    ax.set_ylabel("exit->entry time (ns), kernel buckets")
    ax.set_xlabel("seconds from the start")
    fig.colorbar(mesh, ax=ax, label="timed exits per bin")
    return _svg(fig)


# -- page ----------------------------------------------------------------------------------------

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 80em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { padding: 0.15em 0.7em; border-bottom: 1px solid #eee; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
.note { color: #555; font-size: 0.9em; }
svg { max-width: 100%; height: auto; }
"""


def _kv_table(items: Sequence[Tuple[str, Any]]) -> str:
    rows = "".join(
        "<tr><th>%s</th><td>%s</td></tr>" % (html.escape(k), html.escape("-" if v is None else str(v)))
        for k, v in items
    )
    return "<table>%s</table>" % rows


def _self_check(report: Report, notes: Sequence[str]) -> str:
    t, h = report.totals, report.health
    items = [
        ("exits", t.exits),
        ("paired (timed)", t.pairs),
        ("open (no entry yet)", t.open),
        ("unfinished (another exit came first)", t.unfinished),
        ("unpaired entries", h.unpaired_entries),
        ("not recorded: start map full", h.start_map_full),
        ("not recorded: stats map full", h.stats_map_full),
        ("abandoned by exited threads", h.abandoned),
    ]
    ok = t.exits == t.pairs + t.open + t.unfinished
    out = _kv_table(items)
    out += "<p>exits = paired + open + unfinished: %s</p>" % ("holds" if ok else "DOES NOT HOLD")
    out += "<pre>%s</pre>" % html.escape(format_health(report))
    if notes:
        out += "<p>Notes from the input:</p><pre>%s</pre>" % html.escape("\n".join(notes))
    return out


def _provenance(source: Dict[str, Any], report: Report, command: Optional[str], intervals: int) -> str:
    items: List[Tuple[str, Any]] = [
        ("source", source.get("kind")),
        ("file", source.get("path")),
        ("kernel", source.get("kernel") or "not recorded"),
        ("layout", source.get("layout")),
        ("architecture", source.get("arch")),
        ("host", source.get("host") or "not recorded"),
        ("command", command),
        ("seconds covered", "%.3f" % (report.time_ns / 1e9) if report.time_ns else "not known"),
        ("intervals", intervals or None),
        ("grouped by", report.group_by),
        ("halt time traced", "yes" if report.halt_known else "no"),
        ("page written", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
    ]
    for k in ("format", "compression", "names", "example"):
        if source.get(k) not in (None, False):
            items.append((k, source[k]))
    return _kv_table(items)


def _json_block(documents: Sequence[Dict[str, Any]]) -> str:
    data = documents[0] if len(documents) == 1 else list(documents)
    text = json.dumps(data, sort_keys=False).replace("</", "<\\/")  # cannot close the script element
    return '<script type="application/json" id="kvmexit-report">%s</script>' % text


def render_page(
    report: Report,
    documents: Sequence[Dict[str, Any]],
    source: Dict[str, Any],
    timeline: Optional[Timeline] = None,
    notes: Sequence[str] = (),
    command: Optional[str] = None,
    by_reason: Optional[Report] = None,
) -> str:
    """The page of one report (for interval runs: the intervals added up, and their timeline).

    ``documents`` are the JSON documents ``--json`` printed for the same run; ``by_reason``, the
    same data grouped by reason, for the histograms (default: the rows merged by reason).
    """
    require_matplotlib()
    import matplotlib

    rows = list(report.rows)
    reasons_rows = list(by_reason.rows) if by_reason is not None else _merge_by_reason(rows)
    reasons = _reason_order(rows)
    shown = reasons[:_MAX_REASONS]
    colors = _colors([*reasons, "other"])
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "kvmexit", "font.size": 9}):
        stack = _plot_stack(rows, colors, shown) if rows else "<p>No exits.</p>"
        hists = _plot_hists(reasons_rows, colors)
        if timeline is not None and timeline.bins:
            rate = _plot_rate(timeline, shown)
            heat = _plot_heat(timeline)
            time_note = "<p class=note>Time axis: %s. Counts: %s.</p>" % (
                html.escape(timeline.basis),
                html.escape(timeline.counts),
            )
        else:
            rate = heat = "<p>No time axis: this input has no timestamps or intervals.</p>"
            time_note = ""
    title = "kvmexit report: %s" % (source.get("path") or source.get("host") or source.get("kind") or "run")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>%s</title><style>%s</style></head><body>" % (html.escape(title), _CSS),
        "<h1>%s</h1>" % html.escape(title),
        "<pre>%s</pre>" % html.escape(format_health(report)),
        "<h2>%s</h2>%s" % (TITLES["stack"], stack),
        "<h2>%s</h2>%s" % (TITLES["hist"], hists),
        "<p class=note>Solid: p50, dashed: p90, dotted: p99, as in the tables: interpolated inside their"
        " bucket (%d per power of two), so within %d%% of the exact value.</p>"
        % (HIST_SUB, round(PERCENTILE_BOUND * 100)),
        "<h2>%s</h2>%s%s" % (TITLES["rate"], time_note, rate),
        "<h2>%s</h2>%s" % (TITLES["heat"], heat),
        "<h2>%s</h2>%s" % (TITLES["check"], _self_check(report, notes)),
        "<h2>%s</h2><pre>%s</pre>" % (TITLES["table"], html.escape(format_table(report))),
        "<h2>%s</h2>%s"
        % (TITLES["source"], _provenance(source, report, command, len(documents) if len(documents) > 1 else 0)),
        "<p class=note>The JSON documents of this report (as <code>--json</code> prints them) are embedded"
        " in this page: <code>script#kvmexit-report</code>.</p>",
        _json_block(documents),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _merge_by_reason(rows: Sequence[Row]) -> List[Row]:
    from ..model import merge_all

    groups: Dict[str, List[Row]] = {}
    for r in rows:
        groups.setdefault(r.reason or "all", []).append(r)
    out = [
        Row(None, None, None, None, None, name, None, None, merge_all([r.stats for r in rs]))
        for name, rs in groups.items()
    ]
    out.sort(key=lambda r: (-r.stats.total_ns, r.reason or ""))
    return out


class HtmlReport:
    """Collects the reports of one run (one, or one per interval) and writes the page at the end."""

    def __init__(self, path: str, force: bool, command: Optional[str] = None) -> None:
        require_matplotlib()
        check_writable(path, force)
        self.path = path
        self.force = force
        self.command = command
        self.reports: List[Report] = []
        self.documents: List[Dict[str, Any]] = []
        self.intervals: List[Optional[Dict[str, Any]]] = []

    def add(self, report: Report, document: Dict[str, Any], interval: Optional[Dict[str, Any]]) -> None:
        self.reports.append(report)
        self.documents.append(document)
        self.intervals.append(interval)

    def write(
        self,
        source: Dict[str, Any],
        timeline: Optional[Timeline] = None,
        notes: Sequence[str] = (),
        sort: str = "count",
    ) -> None:
        from ..model import merge_reports
        from ..timeline import from_intervals

        if not self.reports:
            return
        report = self.reports[0] if len(self.reports) == 1 else merge_reports(self.reports, sort)
        if timeline is None and all(i is not None for i in self.intervals) and len(self.reports) > 1:
            timeline = from_intervals(
                [(float(i["seconds"]), r.rows) for i, r in zip(self.intervals, self.reports) if i is not None]
            )
        page = render_page(report, self.documents, source, timeline, notes, self.command)
        write_new(self.path, page, self.force)


# -- the page of a diff ----------------------------------------------------------------------------

#: Section titles of the diff page.
DIFF_TITLES = {
    "time": "Exit time per second, A and B",
    "hist": "Exit latency, A and B (the kernel's buckets, log axis)",
    "table": "Diff table",
    "method": "Noise: how a change is told from a wiggle",
    "source": "Provenance of A and B",
}

#: How many rows get a latency panel on the diff page.
_DIFF_PANELS = 9


def _key_text(key: Sequence[Any]) -> str:
    return " ".join("-" if v is None else ("vCPU %s" % v if isinstance(v, int) else str(v)) for v in key) or "all"


def _plot_diff_time(diff: Any) -> str:
    from matplotlib.figure import Figure

    rows = diff.rows[:_MAX_BARS]
    if not rows:
        return "<p>No rows.</p>"
    per_s = diff.total.by_rate
    labels = ["%s [%s]" % (_key_text(r.key), r.verdict) for r in rows][::-1]
    values = [(r.time_change.a or 0.0, r.time_change.b or 0.0) for r in rows][::-1]
    scale = 1e6  # ns -> ms
    fig = Figure(figsize=(10, 1.0 + 0.38 * len(rows)))
    ax = fig.subplots()
    ys = list(range(len(rows)))
    ax.barh([y + 0.2 for y in ys], [a / scale for a, _ in values], height=0.4, label="A", color="#9e9e9e")
    ax.barh([y - 0.2 for y in ys], [b / scale for _, b in values], height=0.4, label="B", color="#1f77b4")
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel("exit time per second of run (ms/s)" if per_s else "total exit time (ms)")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def _plot_diff_hists(diff: Any) -> str:
    from matplotlib.ticker import NullFormatter

    rows = [r for r in diff.rows if r.a.pairs or r.b.pairs][:_DIFF_PANELS]
    if not rows:
        return "<p>No timed exits.</p>"
    fig, axes = _panels(len(rows), 2.5)
    for ax, r in zip(axes, rows):
        used = [i for i in range(HIST_SLOTS) if r.a.hist[i] or r.b.hist[i]]
        edges = [max(bucket_bounds(i)[0], 1) for i in range(used[0], used[-1] + 1)] + [bucket_bounds(used[-1])[1] + 1]
        for side, st, color in (("A", r.a, "#9e9e9e"), ("B", r.b, "#1f77b4")):
            if not st.pairs:
                continue
            share = [st.hist[i] / st.pairs for i in range(used[0], used[-1] + 1)]
            ax.stairs(share, edges, label="%s: %d" % (side, st.pairs), color=color, linewidth=1.5)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        p = "" if r.latency_p is None else ", raw p=%.2g" % r.latency_p
        ax.set_title("%s%s" % (_key_text(r.key), p), fontsize=8)
        ax.set_xlabel("exit->entry time (ns)", fontsize=8)
        ax.set_ylabel("share of timed exits", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _svg(fig)


def render_diff_page(diff: Any, document: Dict[str, Any], table: str, method: str) -> str:
    """The page of a ``kvmexit diff``: A and B side by side, the table, and ``document`` (the
    ``--json`` document of the same diff) embedded."""
    require_matplotlib()
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "kvmexit", "font.size": 9}):
        time_plot = _plot_diff_time(diff)
        hists = _plot_diff_hists(diff)
    sides = []
    for name, side in (("A", diff.a), ("B", diff.b)):
        src = side.source
        sides.append(
            "<h3>%s: %s</h3>%s"
            % (
                name,
                html.escape(side.label),
                _kv_table(
                    [
                        ("source", src.get("kind")),
                        ("kernel", src.get("kernel") or "not recorded"),
                        ("layout", src.get("layout")),
                        ("host", src.get("host") or "not recorded"),
                        ("seconds covered", "%.3f" % side.seconds if side.seconds else "not known"),
                        ("exits", side.totals.exits),
                        ("timed exits", side.totals.pairs),
                    ]
                ),
            )
        )
    title = "kvmexit diff: %s -> %s" % (diff.a.label, diff.b.label)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>%s</title><style>%s</style></head><body>" % (html.escape(title), _CSS),
        "<h1>%s</h1>" % html.escape(title),
        "<p class=note>Sorted by the change in exit time; the verdict says which change is beyond noise.</p>",
        "<h2>%s</h2>%s" % (DIFF_TITLES["time"], time_plot),
        "<h2>%s</h2>%s" % (DIFF_TITLES["hist"], hists),
        "<h2>%s</h2><pre>%s</pre>" % (DIFF_TITLES["table"], html.escape(table)),
        "<h2>%s</h2><p>%s</p>" % (DIFF_TITLES["method"], html.escape(method)),
        "<h2>%s</h2>%s" % (DIFF_TITLES["source"], "".join(sides)),
        _json_block([document]),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
