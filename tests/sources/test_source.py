"""Every source behind one interface (kvmexit.sources.Source): snapshot() and close()."""

from __future__ import annotations

import pytest

from kvmexit.commands.report import EXAMPLE_NAMES, EXAMPLE_TRACE
from kvmexit.sources import Source
from kvmexit.sources.live import LiveSource
from kvmexit.sources.trace import TraceSource, read_trace


def test_live_and_trace_sources_are_sources():
    assert issubclass(LiveSource, Source) and issubclass(TraceSource, Source)

    class NoSnapshot(Source):
        def close(self) -> None:
            pass

    with pytest.raises(TypeError):
        NoSnapshot()  # type: ignore[abstract]


def test_a_trace_source_gives_the_readers_snapshot():
    with TraceSource(EXAMPLE_TRACE, names_path=EXAMPLE_NAMES) as source:
        snap = source.snapshot()
        assert source.snapshot() is snap  # read once
        assert source.result.info.format == "ftrace"
    assert snap == read_trace(EXAMPLE_TRACE, names_path=EXAMPLE_NAMES).snapshot
    assert sum(s.exits for s in snap.stats.values()) == 843
