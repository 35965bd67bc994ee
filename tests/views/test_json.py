from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from kvmexit.model import build_report
from kvmexit.reasons import label
from kvmexit.views import SCHEMA_VERSION, report_document
from test_model import SNAP

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "src/kvmexit/schema/report-v2.json").read_text())
SOURCE = {"kind": "live", "arch": "arm64", "layout": "arm64", "kernel": "6.1.0"}


@pytest.mark.parametrize("group_by", ["thread", "vcpu", "vm", "reason"])
def test_documents_validate_against_the_published_schema(group_by):
    doc = report_document(build_report(SNAP, label, group_by), SOURCE, None)
    jsonschema.validate(json.loads(json.dumps(doc)), SCHEMA)
    assert doc["schema"] == SCHEMA_VERSION


def test_schema_rejects_a_missing_field():
    doc = report_document(build_report(SNAP, label), SOURCE, None)
    del doc["rows"][0]["p99_ns"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


def test_row_values_and_histogram():
    doc = report_document(build_report(SNAP, label), SOURCE, {"index": 0, "start": "a", "end": "b", "seconds": 1.0})
    row = doc["rows"][0]
    assert (row["tid"], row["reason"], row["code"], row["detail"]) == (101, "WFx", 2, 1)
    assert (row["count"], row["pairs"], row["avg_ns"], row["min_ns"], row["max_ns"]) == (10, 10, 100.0, 50, 200)
    # K1: 50 ns, 100 ns x 4, 200 ns x 5 (log-linear buckets)
    assert row["hist"] == [[48, 55, 1], [96, 111, 4], [192, 223, 5]]
    assert doc["totals"]["exits"] == 24


def test_halt_time_is_null_when_not_traced():
    from dataclasses import replace

    doc = report_document(build_report(replace(SNAP, halt_known=False), label), SOURCE, None)
    jsonschema.validate(doc, SCHEMA)
    assert doc["rows"][0]["halt_ns"] is None and doc["totals"]["halt_ns"] is None
