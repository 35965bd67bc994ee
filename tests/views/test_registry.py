"""Views register by name; the Emitter looks them up and has no branch per format."""

from __future__ import annotations

import argparse
import io
import json

from kvmexit.commands.common import Emitter
from kvmexit.model import ExitKey, ExitStats, Snapshot, build_report
from kvmexit.reasons import label
from kvmexit.views import registry
from kvmexit.views.registry import VIEWS, View, ViewOptions, make_view, register


def _report():
    return build_report(Snapshot("arm64", {ExitKey(1, 2, 2, 0x16): ExitStats(pairs=3, total_ns=30)}), label)


def _args(**kw):
    base = dict(json=False, csv=False, hist=False, html=None, force=False, sort="count")
    base.update(kw)
    return argparse.Namespace(**base)


def test_the_built_in_views_are_registered():
    assert {"text", "json", "csv", "html"} <= set(VIEWS)
    out = io.StringIO()
    make_view("json", out, ViewOptions(source={"kind": "test"})).emit(_report())
    assert json.loads(out.getvalue())["source"] == {"kind": "test"}


def test_the_emitter_writes_through_the_registered_view(monkeypatch):
    seen = []

    class Recording(View):
        machine = True  # so the self-check line goes to stderr

        def emit(self, report, interval=None):
            seen.append((report.totals.pairs, interval))

        def close(self, timeline=None, notes=()):
            seen.append("closed")

    monkeypatch.setattr(registry, "VIEWS", dict(VIEWS))  # restored after the test
    register("csv")(Recording)
    out = io.StringIO()
    em = Emitter(_args(csv=True), {"kind": "test"}, out=out)
    em.emit(_report(), {"end": "e", "seconds": 1.0})
    em.close()
    assert seen == [(3, {"end": "e", "seconds": 1.0}), "closed"]
    assert out.getvalue() == ""


def test_text_and_its_self_check_on_the_same_stream():
    out = io.StringIO()
    Emitter(_args(), {"kind": "test"}, out=out).emit(_report())
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["TGID", "TID", "VM"] and lines[-1].startswith("kvmexit: 3 exits: 3 paired")
