"""The slow-exit log's views: a text line and a JSON line per exit, with the split of its duration
where it was measured (``-`` and null where not, never 0)."""

from __future__ import annotations

import jsonschema
import pytest

from kvmexit.model import SlowExit, ThreadInfo
from kvmexit.views.slow import SLOW_SCHEMA, format_slow, slow_document, slow_schema

US = 1000
BASE = SlowExit(
    time_ns=5_000_000_000,
    tgid=100,
    tid=101,
    code=2,
    detail=0x24,
    duration_ns=340 * US,
    halt_ns=0,
    pc=0x40000104,
    esr=0x24 << 26,
    esr_whole=False,
    thread=ThreadInfo(comm="CPU 0/KVM", vm="web01", vcpu=0),
)
SPLIT = BASE._replace(vmm_ns=80 * US, preempt_ns=200 * US, blocked_ns=40 * US)


def test_without_the_split_the_line_is_as_before():
    line = format_slow("arm64", BASE)
    assert " 340us (halted 0ns) pc 0x40000104 " in line
    doc = slow_document("arm64", BASE)
    assert [doc[f] for f in ("kernel_ns", "vmm_ns", "preempt_ns", "blocked_ns")] == [None] * 4
    assert doc["schema"] == SLOW_SCHEMA == "kvmexit-slow/2"
    jsonschema.validate(doc, slow_schema(doc["schema"]))


def test_with_the_split_every_part_of_the_duration_adding_up_to_it():
    assert SPLIT.kernel_ns == 20 * US
    line = format_slow("arm64", SPLIT)
    assert " 340us (kernel 20us, vmm 80us, halted 0ns, preempted 200us, blocked 40us) pc " in line
    doc = slow_document("arm64", SPLIT)
    parts = [doc[f] for f in ("kernel_ns", "vmm_ns", "halt_ns", "preempt_ns", "blocked_ns")]
    assert parts == [20 * US, 80 * US, 0, 200 * US, 40 * US] and sum(parts) == doc["duration_ns"]
    jsonschema.validate(doc, slow_schema(doc["schema"]))


def test_an_unknown_part_is_a_dash_and_null_and_so_is_the_kernels():
    e = SPLIT._replace(halt_ns=None)
    assert e.kernel_ns is None
    assert "(kernel -, vmm 80us, halted -, preempted 200us, blocked 40us)" in format_slow("arm64", e)
    doc = slow_document("arm64", e)
    assert doc["kernel_ns"] is None and doc["halt_ns"] is None and doc["vmm_ns"] == 80 * US
    jsonschema.validate(doc, slow_schema(doc["schema"]))


def test_both_schema_versions_are_kept_and_an_old_line_still_validates():
    doc = slow_document("arm64", SPLIT)
    old = {k: v for k, v in doc.items() if k not in ("kernel_ns", "vmm_ns", "preempt_ns", "blocked_ns")}
    old["schema"] = "kvmexit-slow/1"
    jsonschema.validate(old, slow_schema("kvmexit-slow/1"))
    with pytest.raises(jsonschema.ValidationError):  # v1 has no split
        jsonschema.validate(dict(doc, schema="kvmexit-slow/1"), slow_schema("kvmexit-slow/1"))
    with pytest.raises(jsonschema.ValidationError):  # v2 requires it
        jsonschema.validate(dict(old, schema="kvmexit-slow/2"), slow_schema("kvmexit-slow/2"))
    with pytest.raises(ValueError, match="not a kvmexit slow-exit log schema"):
        slow_schema("kvmexit-slow/9")
