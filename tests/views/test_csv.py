from __future__ import annotations

import csv
import io

from kvmexit.model import build_report
from kvmexit.reasons import label
from kvmexit.views import CSV_COLUMNS, format_csv
from test_model import SNAP


def test_csv_has_header_once_and_one_line_per_row():
    rep = build_report(SNAP, label)
    text = format_csv(rep, time="T1") + format_csv(rep, time="T2", header=False)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == 8
    assert rows[0]["time"] == "T1" and rows[4]["time"] == "T2"
    assert (rows[0]["reason"], rows[0]["count"], rows[0]["avg_ns"], rows[0]["vm"]) == ("WFx", "10", "100.0", "vm-a")
