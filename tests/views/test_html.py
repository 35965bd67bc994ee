"""The HTML page: same numbers as --json (embedded), self-contained, and rendered by a browser."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from browser import render, require
from kvmexit.cli import main
from kvmexit.commands.report import EXAMPLE_NAMES, EXAMPLE_TRACE
from kvmexit.model import build_report, delta
from kvmexit.reasons import label
from kvmexit.sources.trace import read_trace
from kvmexit.views import format_duration, report_document

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "tests" / "data" / "traces"
SCREENSHOT = ROOT / "docs" / "report.png"


@pytest.fixture(scope="module")
def mpl():
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        require("matplotlib", str(e))


def embedded(page: str):
    m = re.search(r'<script type="application/json" id="kvmexit-report">(.*?)</script>', page, re.S)
    assert m is not None, "no embedded JSON block"
    return json.loads(m.group(1))


def cli(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def example(mpl, tmp_path_factory):
    """The example trace's page, written once with --json: (page path, its text, --json's document)."""
    import contextlib
    import io

    page = tmp_path_factory.mktemp("html") / "example.html"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["report", "--example", "--json", "--html", str(page)]) == 0
    return page, page.read_text(), json.loads(out.getvalue())


def test_the_page_embeds_what_json_prints(example, capsys, tmp_path):
    _, text, doc = example
    assert embedded(text) == doc
    # a saved report of the same run makes the same page data
    saved = tmp_path / "a.json"
    saved.write_text(json.dumps(doc))
    page = tmp_path / "r.html"
    rc, out, err = cli(capsys, "report", "--html", str(page), str(saved))
    assert rc == 0, err
    assert out.startswith("TGID")
    assert embedded(page.read_text()) == doc


def test_the_page_shows_every_part(example, capsys):
    from kvmexit.views.html import TITLES

    _, text, _ = example
    for title in TITLES.values():
        assert "<h2>%s</h2>" % title in text
    assert "No time axis" not in text  # the trace's timestamps give the heatmaps
    assert "kvmexit: 843 exits: 841 paired, 2 open, 0 unfinished" in text
    for reason in ("DABT_LOW", "HVC64", "SYS64", "WFx", "IRQ", "IABT_LOW"):
        assert ">%s<" % reason in text  # legend and axis text (SVG text, not paths)
    # each reason's histogram marks the percentiles of `report --by reason`
    by_reason = json.loads(cli(capsys, "report", "--example", "--by", "reason", "--json")[1])
    for row in by_reason["rows"]:
        for q in (50, 90, 99):
            assert ">p%d %s<" % (q, format_duration(row["p%d_ns" % q])) in text
    assert "6.1.0-56-arm64" in text and "kvmexit report --example --json --html" in text


def test_the_page_needs_nothing_from_elsewhere(example):
    _, text, _ = example
    refs = re.findall(r'\b(?:src|href)\s*=\s*["\']([^"\']*)', text, re.I)
    # inline SVG refers to its own ids, and its raster images are inline data
    assert [r for r in refs if not r.startswith(("#", "data:image/png;base64,"))] == []
    assert "<link" not in text and "@import" not in text and "url(http" not in text
    assert not re.search(r"<script(?![^>]*application/json)", text)


def test_a_saved_report_and_its_intervals_make_a_page(mpl, capsys, tmp_path):
    """-i --json saved: the page adds the intervals up and draws them over time."""
    snap = read_trace(EXAMPLE_TRACE, names_path=EXAMPLE_NAMES).snapshot
    keys = sorted(snap.stats)
    first = replace(snap, stats={k: snap.stats[k] for k in keys[:5]}, time_ns=0)
    docs = []
    for i, cur in enumerate([first, delta(snap, first)]):
        interval = {"index": i, "start": "s", "end": "e", "seconds": 2.0}
        docs.append(report_document(build_report(cur, label), {"kind": "live", "arch": "arm64"}, interval))
    saved = tmp_path / "run.json"
    saved.write_text("".join(json.dumps(d) + "\n" for d in docs))
    page = tmp_path / "r.html"
    rc, out, err = cli(capsys, "report", "--json", "--html", str(page), str(saved))
    assert rc == 0, err
    text = page.read_text()
    whole = json.loads(out)
    assert embedded(text) == whole
    assert whole["seconds"] == 4.0 and whole["totals"]["exits"] == 843
    assert "Time axis: the report&#x27;s intervals" in text


def test_live_intervals_are_collected_into_one_page(mpl, tmp_path, monkeypatch):
    """The live command's Emitter: one page with every interval's document and a time axis."""
    import argparse
    import io

    from kvmexit.commands.common import Emitter

    snap = read_trace(EXAMPLE_TRACE, names_path=EXAMPLE_NAMES).snapshot
    keys = sorted(snap.stats)
    first = replace(snap, stats={k: snap.stats[k] for k in keys[:5]})
    page = tmp_path / "live.html"
    args = argparse.Namespace(json=False, csv=False, hist=False, html=str(page), force=False, sort="count")
    em = Emitter(args, {"kind": "live", "arch": "arm64", "host": "h1", "kernel": "6.1"}, out=io.StringIO())
    docs = []
    for i, cur in enumerate([first, delta(snap, first)]):
        interval = {"index": i, "start": "s", "end": "e", "seconds": 1.0}
        report = build_report(cur, label)
        docs.append(report_document(report, em.source, interval))
        em.emit(report, interval)
    assert not page.exists()
    em.close()
    text = page.read_text()
    assert embedded(text) == docs
    assert "Time axis: the report&#x27;s intervals" in text
    assert "kvmexit: 843 exits" in text  # the intervals added up


def test_without_matplotlib_one_line_names_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, out, err = cli(capsys, "report", "--example", "--html", str(tmp_path / "r.html"))
    assert rc == 1 and out == ""
    assert err.strip() == (
        "kvmexit report: error: --html needs matplotlib"
        " (hint: apt install python3-matplotlib, or pip install matplotlib)"
    )
    assert not (tmp_path / "r.html").exists()


def test_no_clobbering_and_no_following_symlinks(mpl, capsys, tmp_path):
    target = tmp_path / "target"
    target.write_text("keep me")
    link = tmp_path / "r.html"
    link.symlink_to(target)
    rc, _, err = cli(capsys, "report", "--example", "--html", str(link))
    assert rc == 1 and "already exists (hint: use --force to overwrite it)" in err
    rc, _, err = cli(capsys, "report", "--example", "--html", str(link), "--force")
    assert rc == 0, err
    assert target.read_text() == "keep me"
    assert not link.is_symlink() and embedded(link.read_text())["totals"]["exits"] == 843


# -- rendered by a browser -------------------------------------------------------------------------


def test_the_console_check_sees_script_errors(tmp_path):
    """The check below can fail: a page with a script error shows up in the console lines."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefined_function()</script></body></html>")
    _, console = render(bad, "--dump-dom")
    assert any("undefined_function is not defined" in line for line in console)


def test_chromium_renders_the_example_page(example, tmp_path):
    from kvmexit.views.html import TITLES

    page = example[0]
    dom, console = render(page, "--dump-dom")
    assert console == []
    for title in TITLES.values():
        assert title in dom
    for legend in ("reason", "WFx", "DABT_LOW", "p50", "p90", "p99", "timed exits per second"):
        assert legend in dom
    png = tmp_path / "r.png"
    _, console = render(page, "--window-size=1100,1500", "--hide-scrollbars", "--screenshot=" + str(png))
    assert console == []
    from matplotlib.image import imread

    pixels = imread(str(png))
    assert pixels.shape[:2] == (1500, 1100)
    assert pixels[..., :3].std() > 0.05  # not a blank page: plots and text
    colored = ((pixels[..., :3].max(axis=2) - pixels[..., :3].min(axis=2)) > 0.3).mean()
    assert colored > 0.01  # the plots' colours are there
    if os.environ.get("KVMEXIT_WRITE_SCREENSHOT") == "1":
        from PIL import Image

        Image.open(png).convert("RGB").quantize(colors=64).save(SCREENSHOT, optimize=True)
